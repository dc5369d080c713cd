"""Detectron2 plugin, laid out like Detectron2's ``projects/PointRend``.

    from detectron2.config import get_cfg
    from crop_classifier.d2 import add_crop_classifier_config, CropClassifierPredictor

    cfg = get_cfg(); add_crop_classifier_config(cfg)
    cfg.merge_from_file("configs/d2/crop_classifier_R_50_FPN_3x.yaml")
    outputs = CropClassifierPredictor(cfg)(cv2.imread("input.jpg"))

Importing this package registers ``CropClassifierRCNN`` in ``META_ARCH_REGISTRY`` and
``build_narrow_resnet_fpn_backbone`` (R-18/34 FPN of any width, for CPU-sized detectors) in ``BACKBONE_REGISTRY``.
"""
from . import backbone as _backbone  # noqa: F401  (registers build_narrow_resnet_fpn_backbone)
from .config import add_crop_classifier_config
from .meta_arch import CropClassifierRCNN, build_second_stage, detector_class_names
from .predictor import CropClassifierPredictor, WeightsUnavailableError, load_detector_weights

__all__ = [
    "add_crop_classifier_config", "CropClassifierRCNN", "build_second_stage", "detector_class_names",
    "CropClassifierPredictor", "WeightsUnavailableError", "load_detector_weights",
]
