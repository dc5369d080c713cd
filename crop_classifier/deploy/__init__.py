"""Deploying the classifier: export (ONNX, TorchScript), CPU runtimes (ONNX Runtime, OpenVINO), int8
(FX static quantization) and ``load_classifier``, which turns any of those files into an object with
``InferenceClassifier``'s call (crops [0, 1] -> probabilities). Optional runtimes are imported lazily."""
from .export import ExportOptions, export_checkpoint, export_model
from .forms import Form, form_of, int8_advice
from .loader import BACKENDS, DEFAULT_CPU_BACKEND, cache_root, cached_onnx, describe, file_kind, load_classifier
from .quantize import QUANTIZED, CalibrationOptions, is_quantized, load_int8, quantize_checkpoint
from .runtimes import OnnxRuntimeClassifier, OpenVinoClassifier, RuntimeOptions, TorchScriptClassifier

__all__ = [
    "ExportOptions", "export_checkpoint", "export_model", "BACKENDS", "DEFAULT_CPU_BACKEND", "cached_onnx",
    "describe", "file_kind", "load_classifier", "QUANTIZED", "CalibrationOptions", "is_quantized", "load_int8",
    "quantize_checkpoint", "OnnxRuntimeClassifier", "OpenVinoClassifier", "RuntimeOptions",
    "TorchScriptClassifier", "Form", "form_of", "int8_advice", "cache_root",
]
