"""Batch inference behind ``tools/infer.py``: inputs, the two stages, COCO results, pictures, evaluation."""
from .runner import InferenceRun, InferOptions, format_summary, route_line, run

__all__ = ["InferenceRun", "InferOptions", "format_summary", "route_line", "run"]
