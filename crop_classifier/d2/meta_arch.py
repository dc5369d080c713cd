"""``CropClassifierRCNN``: GeneralizedRCNN + the crop classifier as a second stage.

Training trains the detector exactly as ``GeneralizedRCNN`` does (the classifier is frozen and stays in
eval mode), so ``DefaultTrainer`` works unchanged. Inference runs the detector, crops every kept box from
the original-resolution image (input key ``"original_image"``; without it, from ``"image"`` with the boxes
scaled), classifies all crops of the batch in chunks and fuses (``crop_classifier.second_stage``).

Output ``Instances`` (in the output class space, see ``output_class_names``): ``pred_boxes``,
``pred_classes``, ``scores`` (fused) and, per box, ``det_classes`` / ``det_scores`` (the detector's own),
``cls_probs`` ``[N, K]``, ``cls_scores`` (NaN where not classified) and ``classified``.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, GeneralizedRCNN
from detectron2.structures import Instances

from ..detectors.detectron2_model import detector_class_names
from ..errors import CheckpointError, ConfigError, ParameterError
from ..models import ALL_ARCHITECTURES, build_classifier, load_checkpoint
from ..models.inference import build_inference_classifier
from ..deploy import is_quantized, load_classifier
from ..deploy.loader import ALL_PRECISIONS
from ..deploy.routed import only_routed, weights_paths
from ..second_stage import SecondStage, SecondStageConfig, d2_error
from ..structures import FusedDetections

logger = logging.getLogger(__name__)

KEY = "MODEL.CROP_CLASSIFIER."
# load_classifier's parameters whose key is not KEY + the name in capitals (``d2_error``)
LOADER_KEYS = {"path": KEY + "WEIGHTS", "expected_meta": KEY + "ARCH", "device": "MODEL.DEVICE"}


@dataclass(frozen=True)
class CropClassifierSettings:
    """``MODEL.CROP_CLASSIFIER`` read and checked in one block (each error names its key); ``None`` = not set."""

    weights: str
    arch: Optional[str]
    width: Optional[float]
    class_names: Tuple[str, ...]
    detector_class_names: Tuple[str, ...]
    precision: str
    device: str
    route_thresholds: Optional[Tuple[float, ...]]  # None: the checkpoint's
    stage: SecondStageConfig  # the second stage's knobs (keys of second_stage.KNOBS)

    @classmethod
    def from_cfg(cls, cfg) -> "CropClassifierSettings":
        c = cfg.MODEL.CROP_CLASSIFIER
        for key, ok, expected in (
            ("ARCH", c.ARCH is None or c.ARCH in ALL_ARCHITECTURES, "one of " + ", ".join(sorted(ALL_ARCHITECTURES))),
            ("ROUTE_THRESHOLDS", isinstance(c.ROUTE_THRESHOLDS, (list, tuple)) and all(
                isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and t > 0
                for t in c.ROUTE_THRESHOLDS), "a list of sizes in px > 0 (empty: the checkpoint's)"),
            ("WIDTH", c.WIDTH is None or (isinstance(c.WIDTH, (int, float)) and c.WIDTH > 0), "a number > 0"),
            ("PRECISION", c.PRECISION in ALL_PRECISIONS, "one of " + ", ".join(ALL_PRECISIONS)),
        ):
            if not ok:
                raise ConfigError(f"config key {KEY}{key}: got {c[key]!r}, expected {expected}")
        if not c.WEIGHTS:
            missing = [k for k in ("ARCH", "WIDTH") if c[k] is None] + ([] if len(c.CLASS_NAMES) else ["CLASS_NAMES"])
            if missing:
                raise ConfigError(f"{KEY}WEIGHTS is empty, so the config describes the classifier: set "
                                  + ", ".join(KEY + k for k in missing) + " (or set WEIGHTS, a classifier checkpoint)")
        try:
            stage = SecondStageConfig.from_d2(c)
        except ParameterError as e:
            raise ConfigError(d2_error(e, KEY)) from None
        return cls(
            weights=str(c.WEIGHTS), arch=c.ARCH, width=None if c.WIDTH is None else float(c.WIDTH),
            class_names=tuple(c.CLASS_NAMES), detector_class_names=tuple(detector_class_names(cfg)),
            precision=str(c.PRECISION), device=str(cfg.MODEL.DEVICE),
            route_thresholds=tuple(float(t) for t in c.ROUTE_THRESHOLDS) or None, stage=stage,
        )


def check_against_checkpoint(s: CropClassifierSettings, meta: Dict[str, Any]) -> None:
    """Every key the config sets must agree with what the checkpoint holds; the error names both."""
    for key, want, got in (("ARCH", s.arch, meta["arch"]), ("WIDTH", s.width, meta["width"]),
                           ("CLASS_NAMES", list(s.class_names) or None, list(meta["class_names"]))):
        if want is None:
            continue
        same = math.isclose(float(want), float(got), rel_tol=1e-9) if key == "WIDTH" else want == got
        if not same:
            raise CheckpointError(
                f"{KEY}{key} is {want!r} but {KEY}WEIGHTS {s.weights} holds a classifier with {key.lower()} {got!r}; "
                f"leave {key} unset to take it from the checkpoint"
            )


def build_second_stage(cfg) -> SecondStage:
    """The second stage a config describes (classifier weights loaded when MODEL.CROP_CLASSIFIER.WEIGHTS is set)."""
    s = CropClassifierSettings.from_cfg(cfg)
    try:
        classifier = _load_classifier(s) if s.weights else _random_classifier(s)
        classifier = only_routed(classifier, s.route_thresholds, s.weights or f"{KEY}ARCH {s.arch}")
    except ParameterError as e:  # the library names its parameter; a config's user reads the key
        raise ConfigError(d2_error(e, KEY, LOADER_KEYS)) from None
    return SecondStage(classifier, s.detector_class_names, s.stage)


def _load_classifier(s: CropClassifierSettings):
    """WEIGHTS: any file ``crop_classifier.load_classifier`` takes (fp32, int8, routed, a routed set), on torch
    (the model runs inside Detectron2's module), checked against the config's keys."""
    paths = weights_paths(s.weights)
    quantized = len(paths) == 1 and paths[0].suffix != ".onnx" and is_quantized(load_checkpoint(paths[0])["meta"])
    classifier = load_classifier(s.weights, "torch", device=s.device, precision="int8" if quantized else s.precision,
                                 route_thresholds=s.route_thresholds)
    check_against_checkpoint(s, classifier.meta.to_dict())
    return classifier


def _random_classifier(s: CropClassifierSettings):
    logger.warning(
        "MODEL.CROP_CLASSIFIER.WEIGHTS is empty: the %s classifier starts from random weights; they must come "
        "from MODEL.WEIGHTS (a checkpoint of this meta-architecture)", s.arch
    )
    model = build_classifier(s.arch, len(s.class_names), width=s.width, aux_logits=False)
    meta = {"arch": s.arch, "width": s.width, "class_names": list(s.class_names), "input_size": model.input_size}
    return build_inference_classifier(model, meta, device=s.device, precision=s.precision,
                                      route_thresholds=s.route_thresholds)


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
    def __init__(self, *, second_stage: SecondStage, classifier_preloaded: bool = False, **kwargs: Any):
        super().__init__(**kwargs)
        self.second_stage = second_stage
        # True when the classifier's weights came from MODEL.CROP_CLASSIFIER.WEIGHTS: a detector checkpoint
        # (MODEL.WEIGHTS) without them then leaves no gap there (see CropClassifierPredictor).
        self.classifier_preloaded = bool(classifier_preloaded)

    @classmethod
    def from_config(cls, cfg) -> Dict[str, Any]:
        ret = super().from_config(cfg)
        ret["second_stage"] = build_second_stage(cfg)
        ret["classifier_preloaded"] = bool(cfg.MODEL.CROP_CLASSIFIER.WEIGHTS)
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
        fused = self.second_stage.run(
            images, boxes, [i.pred_classes for i in instances], [i.scores for i in instances]
        ).detections
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
