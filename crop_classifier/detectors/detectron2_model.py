"""Detectron2 first stage: the model zoo's Faster R-CNN, or a config file of your own (imports Detectron2 lazily)."""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np

from .base import FirstStage, ImageDetections, ImageRecord

MODEL_ZOO_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"


def detectron2_config(config_file: Optional[str] = None, opts: Sequence[str] = ()):
    """A Detectron2 config with ``MODEL.CROP_CLASSIFIER`` keys; ``None`` = the model zoo Faster R-CNN."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg

    from ..d2 import add_crop_classifier_config

    cfg = add_crop_classifier_config(get_cfg())
    if config_file is None:
        cfg.merge_from_file(model_zoo.get_config_file(MODEL_ZOO_CONFIG))
        cfg.MODEL.WEIGHTS = model_zoo.get_checkpoint_url(MODEL_ZOO_CONFIG)
    else:
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


class Detectron2Detector(FirstStage):
    """Runs a ``GeneralizedRCNN`` (plain detector; the second stage is applied by the caller).

    ``weights``: a local file; without it ``MODEL.WEIGHTS`` of the config (the model zoo URL for the zoo
    model). Offline, a URL fails with an error naming ``weights_flag``.
    """

    name = "faster_rcnn"

    def __init__(
        self,
        config_file: Optional[str] = None,
        weights: Optional[str] = None,
        *,
        device: str = "cpu",
        score_thresh: Optional[float] = None,
        class_names: Optional[Sequence[str]] = None,
        opts: Sequence[str] = (),
        weights_flag: str = "--detector-weights",
    ):
        import torch
        from detectron2.data import transforms as T
        from detectron2.modeling import build_model

        from ..d2 import load_detector_weights
        from ..d2.meta_arch import detector_class_names

        cfg = detectron2_config(config_file, opts)
        if cfg.MODEL.META_ARCHITECTURE == "CropClassifierRCNN":
            cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"  # the caller runs the second stage itself
        if weights:
            cfg.MODEL.WEIGHTS = str(weights)
        if score_thresh is not None:
            cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(score_thresh)
        cfg.MODEL.DEVICE = str(device)
        if class_names:
            cfg.MODEL.CROP_CLASSIFIER.DETECTOR_CLASS_NAMES = list(class_names)
        if not cfg.MODEL.WEIGHTS:
            raise ValueError(f"no detector weights: {config_file} sets no MODEL.WEIGHTS; pass {weights_flag} FILE")
        self.class_names = detector_class_names(cfg)
        self.cfg = cfg
        self.model = build_model(cfg).eval()
        load_detector_weights(self.model, cfg.MODEL.WEIGHTS, weights_flag)
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        self._torch = torch

    def detect(self, records: Sequence[ImageRecord]) -> List[ImageDetections]:
        torch = self._torch
        inputs = []
        for r in records:
            img = r.image if self.input_format == "RGB" else r.image[:, :, ::-1]
            h, w = img.shape[:2]
            resized = self.aug.get_transform(img).apply_image(img)
            inputs.append({"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32")),
                           "height": h, "width": w})
        if not inputs:
            return []
        with torch.no_grad():
            outputs = self.model(inputs)
        out = []
        for o in outputs:
            inst = o["instances"].to("cpu")
            out.append(ImageDetections(inst.pred_boxes.tensor.numpy(), inst.pred_classes.numpy(), inst.scores.numpy()))
        return out
