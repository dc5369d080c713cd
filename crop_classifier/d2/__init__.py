"""Detectron2 plugin, laid out like Detectron2's ``projects/PointRend``.

    from detectron2.config import get_cfg
    from crop_classifier.d2 import add_crop_classifier_config, CropClassifierPredictor

    cfg = get_cfg(); add_crop_classifier_config(cfg)
    cfg.merge_from_file("configs/d2/crop_classifier_R_50_FPN_3x.yaml")
    outputs = CropClassifierPredictor(cfg)(cv2.imread("input.jpg"))

Importing this package registers ``CropClassifierRCNN`` in ``META_ARCH_REGISTRY`` and
``build_narrow_resnet_fpn_backbone`` (R-18/34 FPN of any width, for CPU-sized detectors; it lives with the
plain Detectron2 first stage in ``crop_classifier.detectors``) in ``BACKBONE_REGISTRY``.
"""
from ..detectors.detectron2_backbone import build_narrow_resnet_fpn_backbone, register_backbones
from ..detectors.detectron2_model import detector_class_names, load_detector_weights
from .config import add_crop_classifier_config
from .meta_arch import CropClassifierRCNN, build_second_stage
from .predictor import CropClassifierPredictor

register_backbones()

__all__ = [
    "add_crop_classifier_config", "CropClassifierRCNN", "build_second_stage", "detector_class_names",
    "CropClassifierPredictor", "load_detector_weights", "build_narrow_resnet_fpn_backbone",
]
