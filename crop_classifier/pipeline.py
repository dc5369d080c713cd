"""Kept for imports written before the second stage became a package: see ``crop_classifier.second_stage``."""
from .second_stage import (  # noqa: F401
    ALL_CLASSES, FUSION_MODES, ClassMap, SecondStage, SecondStageOptions, StageOutput, class_nms, fuse, fuse_image,
    parse_class_map,
)
from .structures import FusedDetections  # noqa: F401

__all__ = ["ALL_CLASSES", "FUSION_MODES", "ClassMap", "FusedDetections", "SecondStage", "SecondStageOptions",
           "StageOutput", "class_nms", "fuse", "fuse_image", "parse_class_map"]
