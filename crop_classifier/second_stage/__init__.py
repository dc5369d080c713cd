"""The second stage, in three parts: ``class_map`` (detector classes -> classifier class sets, output class
space), ``fusion`` (replace | rescore | filter, NMS) and ``stage`` (``SecondStage``, which wires crops, the
classifier's inference form and fusion for any first stage)."""
from .class_map import ALL_CLASSES, ClassMap, parse_class_map
from .fusion import FUSION_MODES, FusionRule, class_nms, fuse, fuse_image
from .stage import SecondStage, SecondStageOptions, StageOutput

__all__ = ["ALL_CLASSES", "ClassMap", "parse_class_map", "FUSION_MODES", "FusionRule", "class_nms", "fuse", "fuse_image",
           "SecondStage", "SecondStageOptions", "StageOutput"]
