"""The second stage, in four parts: ``class_map`` (detector classes -> classifier class sets, output class
space), ``fusion`` (replace | rescore | filter, NMS), ``config`` (``SecondStageConfig``, the one schema of the
knobs) and ``stage`` (``SecondStage``, which wires crops, the classifier and fusion for any first stage)."""
from .class_map import ALL_CLASSES, ClassMap, parse_class_map
from .config import (KNOBS, Batching, CropOverrides, FusionSettings, SecondStageConfig, Selection, add_arguments,
                     d2_error, flag_error)
from .fusion import FUSION_MODES, FusionRule, class_nms, fuse, fuse_image
from .stage import SecondStage, StageOutput, as_chw

__all__ = ["ALL_CLASSES", "ClassMap", "parse_class_map", "FUSION_MODES", "FusionRule", "class_nms", "fuse", "fuse_image",
           "SecondStage", "SecondStageConfig", "StageOutput", "as_chw", "KNOBS", "Batching", "CropOverrides",
           "FusionSettings", "Selection", "add_arguments", "d2_error", "flag_error"]
