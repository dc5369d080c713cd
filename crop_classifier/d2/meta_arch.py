"""``CropClassifierRCNN``: GeneralizedRCNN + the crop classifier as a second stage.

Training trains the detector exactly as ``GeneralizedRCNN`` does (the classifier is frozen and stays in
eval mode), so ``DefaultTrainer`` works unchanged. Inference runs the detector, crops every kept box from
the original-resolution image (input key ``"original_image"``; without it, from ``"image"`` with the boxes
scaled), classifies all crops of the batch in chunks and fuses (``crop_classifier.pipeline``).

Output ``Instances`` (in the output class space, see ``output_class_names``): ``pred_boxes``,
``pred_classes``, ``scores`` (fused) and, per box, ``det_classes`` / ``det_scores`` (the detector's own),
``cls_probs`` ``[N, K]``, ``cls_scores`` (NaN where not classified) and ``classified``.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import Instances

from ..pipeline import FusedDetections, SecondStage

logger = logging.getLogger(__name__)


def detector_class_names(cfg) -> List[str]:
    """The detector's class names: the config key, else the metadata of the test (or train) dataset."""
    names = list(cfg.MODEL.CROP_CLASSIFIER.DETECTOR_CLASS_NAMES)
    if not names:
        for ds in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
            names = list(MetadataCatalog.get(ds).get("thing_classes", None) or [])
            if names:
                break
    if not names:
        raise ValueError(
            "MODEL.CROP_CLASSIFIER.DETECTOR_CLASS_NAMES is empty and neither DATASETS.TEST nor DATASETS.TRAIN has "
            "thing_classes in the MetadataCatalog: the class map works by name, so set the detector's class names"
        )
    if len(names) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise ValueError(
            f"{len(names)} detector class names but MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES}"
        )
    return names


def build_second_stage(cfg) -> SecondStage:
    """The second stage a config describes (classifier weights loaded when MODEL.CROP_CLASSIFIER.WEIGHTS is set)."""
    from .config import validate_crop_classifier_config

    validate_crop_classifier_config(cfg)
    c = cfg.MODEL.CROP_CLASSIFIER
    det_names = detector_class_names(cfg)
    options = dict(
        class_map=[list(p) for p in c.CLASS_MAP],
        fusion=c.FUSION,
        min_size=c.MIN_BOX_SIZE,
        max_size=c.MAX_BOX_SIZE,
        reclassify=list(c.RECLASSIFY),
        max_crops_per_forward=c.MAX_CROPS_PER_FORWARD,
        nms_thresh=c.NMS_THRESH,
        context=c.CONTEXT if c.CONTEXT >= 0 else None,
        crop_mode=c.CROP_MODE or None,
    )
    if c.WEIGHTS:
        from ..models import classifier_from_checkpoint

        expected = {"arch": c.ARCH, "width": c.WIDTH}
        if len(c.CLASS_NAMES):
            expected["class_names"] = list(c.CLASS_NAMES)
        model, meta = classifier_from_checkpoint(c.WEIGHTS, map_location="cpu", expected_meta=expected)
        return SecondStage.from_model(model, meta, det_names, **options)
    from ..models import build_classifier

    if not len(c.CLASS_NAMES):
        raise ValueError("MODEL.CROP_CLASSIFIER: set WEIGHTS (a classifier checkpoint) or CLASS_NAMES")
    logger.warning(
        "MODEL.CROP_CLASSIFIER.WEIGHTS is empty: the %s classifier starts from random weights; they must come "
        "from MODEL.WEIGHTS (a checkpoint of this meta-architecture)", c.ARCH
    )
    model = build_classifier(c.ARCH, len(c.CLASS_NAMES), width=c.WIDTH, aux_logits=False)
    meta = {"arch": c.ARCH, "width": c.WIDTH, "class_names": list(c.CLASS_NAMES), "input_size": model.input_size}
    return SecondStage.from_model(model, meta, det_names, **options)


def to_rgb_chw(image: Any, input_format: str) -> Tensor:
    """An image in the model's input format (CHW tensor, or HWC numpy as DefaultPredictor gets it) -> RGB CHW."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"original_image: expected an HxWx3 array, got shape {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a 3xHxW image tensor, got {getattr(image, 'shape', type(image))}")
    if input_format == "BGR":
        image = image.flip(0)
    elif input_format != "RGB":
        raise ValueError(f"INPUT.FORMAT {input_format!r}: the crop classifier needs RGB or BGR input")
    if image.is_floating_point():
        # Detectron2 passes float images in 0..255; extract_crops treats float input as 0..1.
        image = image.clamp(0, 255).round().to(torch.uint8)
    return image


@META_ARCH_REGISTRY.register()
class CropClassifierRCNN(GeneralizedRCNN):
    @configurable
    def __init__(self, *, second_stage: SecondStage, **kwargs: Any):
        super().__init__(**kwargs)
        self.second_stage = second_stage

    @classmethod
    def from_config(cls, cfg) -> Dict[str, Any]:
        ret = super().from_config(cfg)
        ret["second_stage"] = build_second_stage(cfg)
        return ret

    @property
    def output_class_names(self) -> List[str]:
        return self.second_stage.output_class_names

    def train(self, mode: bool = True) -> "CropClassifierRCNN":
        super().train(mode)
        self.second_stage.train(mode)  # keeps the classifier itself in eval mode
        return self

    def crop_source(self, inp: Dict[str, Any], box_hw: Tuple[int, int]) -> Tuple[Tensor, Tensor]:
        """(RGB image to crop from, per-axis scale from box coordinates to that image's pixels)."""
        src = inp.get("original_image")
        if src is None:
            src = inp["image"]
        image = to_rgb_chw(src, self.input_format)
        h, w = image.shape[-2:]
        scale = torch.tensor([w / box_hw[1], h / box_hw[0]] * 2, dtype=torch.float32)
        return image, scale

    def inference(
        self,
        batched_inputs: List[Dict[str, Any]],
        detected_instances: Optional[List[Instances]] = None,
        do_postprocess: bool = True,
    ):
        results = super().inference(batched_inputs, detected_instances, do_postprocess)
        instances = [r["instances"] for r in results] if do_postprocess else results
        fused = self.second_stage_on(batched_inputs, instances)
        if do_postprocess:
            return [dict(r, instances=f) for r, f in zip(results, fused)]
        return fused

    def second_stage_on(self, batched_inputs: Sequence[Dict[str, Any]], instances: Sequence[Instances]) -> List[Instances]:
        """Runs the second stage on detector outputs (boxes in ``instances[i].image_size`` coordinates)."""
        images, boxes = [], []
        for inp, inst in zip(batched_inputs, instances):
            image, scale = self.crop_source(inp, inst.image_size)
            images.append(image)
            boxes.append(inst.pred_boxes.tensor.detach().float() * scale.to(inst.pred_boxes.tensor.device))
        fused = self.second_stage(
            images, boxes, [i.pred_classes for i in instances], [i.scores for i in instances]
        )
        return [self.to_instances(inst, f) for inst, f in zip(instances, fused)]

    @staticmethod
    def to_instances(inst: Instances, f: FusedDetections) -> Instances:
        out = inst[f.index]  # keeps the detector's own boxes and any other fields (masks, keypoints)
        out.pred_classes = f.classes
        out.scores = f.scores
        out.det_classes = f.det_classes
        out.det_scores = f.det_scores
        out.cls_probs = f.cls_probs
        out.cls_scores = f.cls_scores
        out.classified = f.classified
        return out
