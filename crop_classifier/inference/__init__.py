"""Batch inference behind ``tools/infer.py``: inputs, the two stages, COCO results, pictures, evaluation."""
from .runner import InferOptions, UsageError, format_summary, run

__all__ = ["InferOptions", "UsageError", "format_summary", "run"]
