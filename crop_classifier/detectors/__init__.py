"""First stages: anything that turns images into boxes + detector classes + scores.

``build_first_stage(spec, ...)`` with ``spec`` one of ``DETECTOR_CHOICES``: ``faster_rcnn`` (Detectron2),
``torchvision:NAME`` (a torchvision detection builder), ``onnx:FILE.onnx`` (any exported detector on ONNX
Runtime), ``ultralytics:FILE.pt`` (needs the ``ultralytics`` extra), ``detections:FILE.json`` (any detector's
COCO results), ``gt:ANNOTATIONS.json`` (ground-truth boxes). Only the Detectron2 first stage imports
Detectron2, ONNX Runtime and Ultralytics are imported by theirs, each only when it is built.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional, Sequence

from ..coco_io import load_coco
from .base import FirstStage, ImageDetections, ImageRecord
from .detections_file import DetectionsFile
from .detectron2_model import Detectron2Detector
from .ground_truth import GroundTruthBoxes
from .onnx_detector import FORMATS as DETECTOR_FORMATS
from .onnx_detector import OnnxDetector
from .torchvision_model import TorchvisionDetector, builder_kwargs, detection_model_names
from .ultralytics_model import UltralyticsDetector

DETECTOR_CHOICES = ("faster_rcnn", "torchvision:NAME", "onnx:FILE.onnx", "ultralytics:FILE.pt", "detections:FILE.json",
                    "gt:ANNOTATIONS.json")


@dataclass(frozen=True)
class FirstStageOptions:
    """What ``build_first_stage`` passes on; each first stage uses the fields that apply to it.

    ``config_file``/``opts``: Detectron2's YAML and KEY VALUE overrides (torchvision: ``opts`` are builder
    keyword arguments, e.g. ``min_size 512``). ``weights``: a local weights file. ``annotations``: COCO
    annotations whose categories name the classes (detections files, ONNX files without ``names``
    metadata). ``class_names``: the detector's class names in id order (Detectron2, torchvision).
    ``detector_format``: an ONNX file's output layout (``DETECTOR_FORMATS``; default: read from the graph).
    """

    config_file: Optional[str] = None
    weights: Optional[str] = None
    device: str = "cpu"
    score_thresh: Optional[float] = None
    annotations: Optional[str] = None
    class_names: Optional[Sequence[str]] = None
    opts: Sequence[str] = ()
    detector_format: Optional[str] = None


def _gt(path: str, o: FirstStageOptions) -> FirstStage:
    return GroundTruthBoxes(path)


def _detections(path: str, o: FirstStageOptions) -> FirstStage:
    return DetectionsFile(path, annotations=o.annotations, score_thresh=o.score_thresh or 0.0)


def _torchvision(name: str, o: FirstStageOptions) -> FirstStage:
    return TorchvisionDetector(name, o.weights, device=o.device, score_thresh=o.score_thresh,
                               class_names=o.class_names, model_kwargs=builder_kwargs(o.opts))


def _onnx(path: str, o: FirstStageOptions) -> FirstStage:
    categories = o.class_names or (load_coco(o.annotations).class_names if o.annotations else None)
    return OnnxDetector(path, device=o.device, score_thresh=o.score_thresh, categories=categories,
                        detector_format=o.detector_format)


def _ultralytics(path: str, o: FirstStageOptions) -> FirstStage:
    return UltralyticsDetector(path, device=o.device, score_thresh=o.score_thresh)


_PREFIXES: Dict[str, Callable[[str, FirstStageOptions], FirstStage]] = {
    "gt:": _gt, "detections:": _detections, "torchvision:": _torchvision, "onnx:": _onnx,
    "ultralytics:": _ultralytics,
}


def build_first_stage(spec: str, **options) -> FirstStage:
    """The first stage ``spec`` names.

    Args:
        spec: one of ``DETECTOR_CHOICES`` (``faster_rcnn`` or ``detectron2``; ``PREFIX:VALUE`` for the rest).
        **options: ``FirstStageOptions`` fields: ``config_file``, ``weights``, ``device``, ``score_thresh``,
            ``annotations``, ``class_names``, ``opts``, ``detector_format`` (a ``TypeError`` names any other).
    Returns:
        a ``FirstStage``: ``class_names`` and ``detect(records) -> [ImageDetections]``.
    """
    o = FirstStageOptions(**options)
    if o.detector_format is not None and not spec.startswith("onnx:"):
        raise ValueError(f"--detector-format {o.detector_format} applies to onnx: detectors only, not {spec!r}")
    for prefix, build in _PREFIXES.items():
        if spec.startswith(prefix):
            value = spec[len(prefix):]
            if not value:
                raise ValueError(f"--detector {spec!r}: nothing after {prefix!r}")
            return build(value, o)
    if spec in ("faster_rcnn", "detectron2"):
        return Detectron2Detector(o.config_file, o.weights, device=o.device, score_thresh=o.score_thresh,
                                  class_names=o.class_names, opts=o.opts)
    raise ValueError(f"unknown detector {spec!r}; valid: {', '.join(DETECTOR_CHOICES)}")


__all__ = ["FirstStage", "ImageDetections", "ImageRecord", "DetectionsFile", "Detectron2Detector", "GroundTruthBoxes",
           "TorchvisionDetector", "OnnxDetector", "UltralyticsDetector", "FirstStageOptions", "build_first_stage",
           "DETECTOR_CHOICES", "DETECTOR_FORMATS", "detection_model_names"]
