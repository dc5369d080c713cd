"""crop_classifier: low-resolution object-crop classifiers as a second stage for detectors.

    import crop_classifier as cc

    classifier = cc.load_classifier("model_final.pth")          # .pth/.safetensors/.onnx/.pt, int8, routed
    stage = cc.SecondStage(classifier, detector_classes=names, config=cc.SecondStageConfig(fusion="rescore"))
    out = stage(image, cc.Detections(xyxy=boxes, class_id=ids, confidence=scores))   # or an sv.Detections

The names below are loaded on first use, so ``import crop_classifier`` stays light. The core never imports
Detectron2; only ``crop_classifier.d2`` and the Detectron2 first stage do, when they are used.
"""
from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "SecondStage": "crop_classifier.second_stage",
    "SecondStageConfig": "crop_classifier.second_stage",
    "Detections": "crop_classifier.detections",
    "load_classifier": "crop_classifier.deploy",
    "build_classifier": "crop_classifier.models",
    "build_first_stage": "crop_classifier.detectors",
    "extract_crops": "crop_classifier.crops",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'crop_classifier' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
