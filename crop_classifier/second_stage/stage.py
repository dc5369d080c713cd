"""The second stage: crop every selected box from the full-resolution image, classify, fuse.

``SecondStage`` only wires the parts: which boxes go to the classifier (class selection, size gates, boxes
that can be cropped), crops (``crops.extract_crops`` with the classifier's ``CropSpec``; a routed classifier's
boxes at their route's size, ``models.routing``), the classifier in
its inference form (``models.inference.InferenceClassifier`` or any runtime with the same call: crops in
[0, 1] -> probabilities), and ``fusion.fuse_image`` per image.

``images``: list of ``[3, H, W]`` RGB tensors (uint8, or float in [0, 1]) at original resolution; per image
``boxes`` ``[N, 4]`` XYXY pixels of that image, detector ``classes`` ``[N]`` and ``scores`` ``[N]``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..crops import extract_crops, valid_boxes_mask
from ..models.inference import build_inference_classifier, load_inference_classifier
from ..models.routing import Routes, native_sides
from ..structures import CropSpec, FusedDetections
from .class_map import ClassMap, MapValue
from .fusion import FusionRule, fuse_image

logger = logging.getLogger(__name__)

ClassMapSpec = Union[None, str, Mapping[str, MapValue], Sequence[Sequence[str]]]


@dataclass
class SecondStageOptions:
    """How boxes are selected and fused. ``context``/``crop_mode`` ``None``: the classifier's own (checkpoint)."""

    class_map: ClassMapSpec = None
    fusion: str = "replace"
    reclassify: Optional[Sequence[str]] = None  # detector classes to re-classify; None/empty: every mapped one
    min_size: float = 0.0  # shorter box side under this (px): not classified; 0 = no gate
    max_size: float = 0.0  # longer box side over this (px): not classified; 0 = no gate
    max_crops_per_forward: int = 64
    nms_thresh: float = 0.5  # class-wise NMS after replace; 0 = off
    # A classifier with a background class: replace drops a box whose best class is the background when
    # p_background is above this (1 = never drop, only down-score); see fusion.py.
    background_drop: float = 0.5
    # Boxes the size gates keep from the classifier get score x the checkpoint's per-class calibration
    # (meta["score_calibration"]: the mean fused/detector ratio of classified boxes of the class), so a gated box
    # does not outrank classified ones only because it was not classified. No calibration in the meta: unchanged.
    calibrate_gates: bool = True
    context: Optional[float] = None
    crop_mode: Optional[str] = None

    @property
    def rule(self) -> FusionRule:
        return FusionRule(self.fusion, self.nms_thresh, self.background_drop)

    def validate(self) -> "SecondStageOptions":
        self.rule.validate()
        if self.max_crops_per_forward < 1:
            raise ValueError(f"max_crops_per_forward must be >= 1, got {self.max_crops_per_forward}")
        if self.min_size < 0 or self.max_size < 0 or (self.max_size and self.max_size < self.min_size):
            raise ValueError(f"box size gates: need 0 <= min_size <= max_size (0 = no limit); got {self.min_size}, "
                             f"{self.max_size}")
        return self


@dataclass
class StageOutput:
    """What one call gives the caller: the fused detections and how many crops each image sent."""

    detections: List[FusedDetections]
    num_crops: List[int]


def _box_sides(boxes: Tensor):
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    return wh.min(dim=1).values, wh.max(dim=1).values


def _check_inputs(images, boxes, det_classes, det_scores, num_detector_classes: int) -> None:
    if not (len(images) == len(boxes) == len(det_classes) == len(det_scores)):
        raise ValueError("images, boxes, classes and scores must have one entry per image")
    D = num_detector_classes
    for i, (image, b, c) in enumerate(zip(images, boxes, det_classes)):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image {i}: expected a [3, H, W] RGB tensor, got shape {tuple(image.shape)}")
        if b.dim() != 2 or b.shape[1] != 4 or c.shape[0] != b.shape[0]:
            raise ValueError(f"image {i}: boxes must be [N, 4] with one class per box; got {tuple(b.shape)} "
                             f"and {tuple(c.shape)}")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= D):
            raise ValueError(f"image {i}: detector class id {int(c.max()) if int(c.max()) >= D else int(c.min())} "
                             f"is outside the {D} detector classes")


class SecondStage(nn.Module):
    """Crops -> classifier -> fusion, for any first stage (see module doc).

    ``classifier``: an ``InferenceClassifier`` (``from_model``/``from_checkpoint`` build one) or another runtime
    with its call and ``meta``; ``detector_classes``: the first stage's class names, in id order.
    """

    def __init__(self, classifier: nn.Module, detector_classes: Sequence[str],
                 options: Optional[SecondStageOptions] = None, **option_kwargs: Any):
        super().__init__()
        if options is not None and option_kwargs:
            raise TypeError("pass options or keyword options, not both")
        self.options = (options or SecondStageOptions(**option_kwargs)).validate()
        self.classifier = classifier
        self.class_map = ClassMap(detector_classes, classifier.meta.class_names, self.options.class_map,
                                  background=getattr(classifier.meta, "background_class", None))
        self.crop: CropSpec = classifier.meta.crop.with_overrides(self.options.context, self.options.crop_mode)
        self.routes: Optional[Routes] = getattr(classifier, "routes", None)  # a RoutedClassifier's
        self.register_buffer("reclassify_mask", self.class_map.selection(self.options.reclassify), persistent=False)
        calibration = dict(getattr(classifier.meta, "extra", {}).get("score_calibration") or {})
        if not self.options.calibrate_gates:
            calibration = {}
        self.register_buffer("gate_factor", self.class_map.set_means(calibration), persistent=False)
        if not bool(self.reclassify_mask.any()):
            logger.warning("no detector class maps to a classifier class: every box passes through untouched "
                           "(detector classes %s, classifier classes %s)",
                           self.class_map.detector_classes[:10], self.class_map.classifier_classes[:10])

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model: nn.Module, meta: Mapping[str, Any], detector_classes: Sequence[str], *,
                   device: Any = None, precision: str = "fp32", **options: Any) -> "SecondStage":
        """A trained ``model`` and its checkpoint meta (classes, input size, normalisation, crop spec)."""
        return cls(build_inference_classifier(model, meta, device=device, precision=precision), detector_classes,
                   **options)

    @classmethod
    def from_checkpoint(cls, path: Any, detector_classes: Sequence[str], *, arch: Optional[str] = None,
                        device: Any = "cpu", precision: str = "fp32", **options: Any) -> "SecondStage":
        """Classes, input size, normalisation and crop spec come from the checkpoint's metadata."""
        expected = {"arch": arch} if arch else None
        classifier = load_inference_classifier(path, device=device, expected_meta=expected, precision=precision)
        return cls(classifier, detector_classes, **options)

    # ------------------------------------------------------------------ properties
    @property
    def output_class_names(self) -> List[str]:
        return self.class_map.output_class_names

    @property
    def classifier_classes(self) -> List[str]:
        return self.class_map.classifier_classes

    @property
    def fusion(self) -> str:
        return self.options.fusion

    @property
    def device(self) -> torch.device:
        return torch.device(self.classifier.device)

    # ------------------------------------------------------------------ steps
    def eligible(self, boxes: Tensor, det_classes: Tensor, image_hw) -> Tensor:
        """``[N]`` bool: boxes that go through the classifier: class selected and mapped, size gates passed,
        and croppable (NaN/inf, inverted or off-image boxes pass through untouched)."""
        ok = self.reclassify_mask.to(det_classes.device)[det_classes] & self.size_ok(boxes).to(det_classes.device)
        if boxes.shape[0]:
            ok &= valid_boxes_mask(boxes.detach(), tuple(image_hw)).to(ok.device)
        return ok

    def size_ok(self, boxes: Tensor) -> Tensor:
        """``[N]`` bool: boxes the size gates let through."""
        ok = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
        o = self.options
        if o.min_size > 0 or o.max_size > 0:
            short, long = _box_sides(boxes)
            if o.min_size > 0:
                ok &= short >= o.min_size
            if o.max_size > 0:
                ok &= long <= o.max_size
        return ok

    def gated_scores(self, boxes: Tensor, det_classes: Tensor, det_scores: Tensor) -> Tensor:
        """Detector scores with the gated boxes' (selected, kept from the classifier by a size gate) multiplied
        by their class's calibration factor (``gate_factor``, 1 without calibration)."""
        gated = self.reclassify_mask.to(det_classes.device)[det_classes] & ~self.size_ok(boxes).to(det_classes.device)
        factor = self.gate_factor.to(det_scores.device)[det_classes]
        return torch.where(gated.to(det_scores.device), det_scores.float() * factor, det_scores.float())

    def crop_sizes(self, boxes: Tensor) -> Tensor:
        """``[N]`` int64: the crop size of each box: its route's input size for a routed classifier (its native
        side with the context margin, ``routing.Routes.assign``), else the classifier's one input size."""
        if self.routes is None:
            return torch.full((boxes.shape[0],), self.crop.size, dtype=torch.long)
        return torch.from_numpy(self.routes.sizes_for(native_sides(boxes, self.crop.context)))

    @torch.no_grad()
    def classify(self, images: Sequence[Tensor], boxes: Sequence[Tensor]) -> List[Tensor]:
        """Class probabilities ``[N_i, K]`` for the crops of every image. A routed classifier gets each route's
        crops in batches of their own size; crops of several images share a forward, in chunks of
        ``max_crops_per_forward`` (one image with thousands of boxes never holds them all)."""
        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box lists")
        out = [torch.zeros(int(b.shape[0]), self.class_map.num_probs, device=self.device) for b in boxes]
        sizes = [self.crop_sizes(b.detach().float().cpu()) for b in boxes]
        for size in sorted({int(v) for s in sizes for v in s.tolist()}):
            picks = [torch.nonzero(s == size).flatten() for s in sizes]
            probs = self._classify_at(images, [b[p.to(b.device)] for b, p in zip(boxes, picks)], size)
            for o, p, pr in zip(out, picks, probs):
                o[p.to(o.device)] = pr.to(o.device)
        return out

    def _classify_at(self, images: Sequence[Tensor], boxes: Sequence[Tensor], size: int) -> List[Tensor]:
        chunk, pending, n_pending, probs = self.options.max_crops_per_forward, [], 0, []

        def flush() -> None:
            nonlocal pending, n_pending
            if n_pending:
                probs.append(self.classifier(torch.cat(pending)))
            pending, n_pending = [], 0

        for image, b in zip(images, boxes):
            image, b = image.to(self.device), b.to(self.device, torch.float32)
            start = 0
            while start < b.shape[0]:
                take = b[start:start + chunk - n_pending]
                pending.append(extract_crops(image, take, size, context=self.crop.context, mode=self.crop.mode).float())
                n_pending, start = n_pending + take.shape[0], start + take.shape[0]
                if n_pending >= chunk:
                    flush()
        flush()
        flat = torch.cat(probs) if probs else torch.zeros(0, self.class_map.num_probs, device=self.device)
        return list(torch.split(flat, [int(b.shape[0]) for b in boxes]))

    def run(self, images: Sequence[Tensor], boxes: Sequence[Tensor], det_classes: Sequence[Tensor],
            det_scores: Sequence[Tensor]) -> StageOutput:
        """Both steps for a batch of images: the fused detections and the crops each image sent."""
        _check_inputs(images, boxes, det_classes, det_scores, len(self.class_map.detector_classes))
        eligible = [self.eligible(b.float(), c.long(), img.shape[-2:]) for img, b, c in zip(images, boxes, det_classes)]
        probs_e = self.classify(images, [b[e] for b, e in zip(boxes, eligible)])
        K, out = self.class_map.num_probs, []
        for b, c, s, e, pe in zip(boxes, det_classes, det_scores, eligible, probs_e):
            dev = b.device
            probs = torch.zeros(b.shape[0], K, device=dev)
            probs[e] = pe.to(dev)
            c, s = c.long().to(dev), s.to(dev).float()
            r = fuse_image(b, c, self.gated_scores(b.float(), c, s), probs, e.to(dev), self.class_map,
                           self.options.rule)
            r.det_scores = s[r.index]  # the detector's own score, whatever the gate calibration gave
            out.append(r)
        return StageOutput(out, [int(e.sum()) for e in eligible])

    def forward(self, images: Sequence[Tensor], boxes: Sequence[Tensor], det_classes: Sequence[Tensor],
                det_scores: Sequence[Tensor]) -> List[FusedDetections]:
        return self.run(images, boxes, det_classes, det_scores).detections

    def changed(self, r: FusedDetections) -> Tensor:
        """``[N]`` bool: boxes whose output class differs from the detector's class."""
        return r.classes != self.class_map.det_to_out.to(r.classes.device)[r.det_classes]


__all__ = ["SecondStage", "SecondStageOptions", "StageOutput"]
