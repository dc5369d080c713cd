"""First stages: anything that turns images into boxes + detector classes + scores.

``build_first_stage("faster_rcnn" | "detections:FILE.json" | "gt:ANNOTATIONS.json", ...)``. Only the
Detectron2 first stage imports Detectron2, and only when it is built (``detectron2_model`` imports it lazily).
"""
from __future__ import annotations

from typing import Optional, Sequence

from .base import FirstStage, ImageDetections, ImageRecord
from .detections_file import DetectionsFile
from .detectron2_model import Detectron2Detector
from .ground_truth import GroundTruthBoxes

DETECTOR_CHOICES = ("faster_rcnn", "detections:FILE.json", "gt:ANNOTATIONS.json")


def build_first_stage(
    spec: str,
    *,
    config_file: Optional[str] = None,
    weights: Optional[str] = None,
    device: str = "cpu",
    score_thresh: Optional[float] = None,
    annotations: Optional[str] = None,
    class_names: Optional[Sequence[str]] = None,
    opts: Sequence[str] = (),
) -> FirstStage:
    if spec.startswith("gt:"):
        return GroundTruthBoxes(spec[3:])
    if spec.startswith("detections:"):
        return DetectionsFile(spec[len("detections:"):], annotations=annotations, score_thresh=score_thresh or 0.0)
    if spec in ("faster_rcnn", "detectron2"):
        return Detectron2Detector(config_file, weights, device=device, score_thresh=score_thresh,
                                  class_names=class_names, opts=opts)
    raise ValueError(f"unknown detector {spec!r}; valid: {', '.join(DETECTOR_CHOICES)}")


__all__ = ["FirstStage", "ImageDetections", "ImageRecord", "DetectionsFile", "Detectron2Detector", "GroundTruthBoxes",
           "build_first_stage", "DETECTOR_CHOICES"]
