"""The second stage: crop every selected box from the full-resolution image, classify, fuse.

    stage = SecondStage(classifier, detector_classes=names, config=SecondStageConfig(fusion="rescore"))
    out = stage(image, detections)           # HxWx3 uint8 RGB (or CHW tensor); Detections or sv.Detections

``SecondStage`` only wires the parts: which boxes go to the classifier (``eligible``: class selection, size
gates, boxes that can be cropped), crops (``crops.extract_crops`` with the classifier's ``CropSpec``; a routed
classifier's boxes at their route's size, ``models.routing``), the classifier (anything with the
``Classifier`` call: crops in [0, 1] -> probabilities; ``crop_classifier.load_classifier`` gives one), and the
fusion half (``fuse``: gate calibration, the fusion rule, NMS), which still images and the tracking loop both
call. Its knobs are one ``SecondStageConfig``.

Tensor level (``run``): ``images`` a list of ``[3, H, W]`` RGB tensors (uint8, or float in [0, 1]) at original
resolution; per image ``boxes`` ``[N, 4]`` XYXY pixels of that image, detector ``classes`` ``[N]`` and
``scores`` ``[N]``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..crops import extract_crops, valid_boxes_mask
from ..detections import Detections, is_supervision
from ..models.inference import Classifier, build_inference_classifier
from ..models.routing import Routes, native_sides
from ..structures import CropSpec, FusedDetections
from .class_map import ClassMap
from .config import SecondStageConfig
from .fitted import FittedFusion
from .fusion import FusionRule, fuse_image

logger = logging.getLogger(__name__)


@dataclass
class StageOutput:
    """What one ``run`` gives the caller: the fused detections and how many crops each image sent."""

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


def as_chw(image: Any) -> Tensor:
    """An HxWx3 uint8 RGB numpy array (or PIL image) or a ``[3, H, W]`` tensor -> ``[3, H, W]`` tensor.

    Raises:
        ValueError: any other shape, naming the one given.
    """
    if isinstance(image, Tensor):
        if image.dim() != 3 or image.shape[0] != 3:
            raise ValueError(f"image: expected a [3, H, W] RGB tensor, got shape {tuple(image.shape)}")
        return image
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image: expected an HxWx3 RGB array, got shape {array.shape}")
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


class SecondStage(nn.Module):
    """Crops -> classifier -> fusion, for any first stage (see module doc).

    Args:
        classifier: a ``Classifier`` (``crop_classifier.load_classifier(path)``, or ``from_model``).
        detector_classes: the first stage's class names, in id order (default: the classifier's own classes,
            for a detector that shares its class space).
        config: the knobs (``SecondStageConfig``); ``**flags`` are its keywords, applied over it.
    """

    def __init__(self, classifier: Classifier, detector_classes: Optional[Sequence[str]] = None,
                 config: Optional[SecondStageConfig] = None, **flags: Any):
        super().__init__()
        config = config or SecondStageConfig()
        self.config: SecondStageConfig = config.replace(**flags) if flags else config
        sel, fus = self.config.selection, self.config.fusion
        self.classifier = classifier
        meta = classifier.meta
        if detector_classes is None:
            detector_classes = [c for c in meta.class_names if c != meta.background_class]
        self.class_map = ClassMap(detector_classes, meta.class_names, [list(p) for p in sel.class_map] or None,
                                  background=meta.background_class)
        self.crop: CropSpec = meta.crop.with_overrides(self.config.crop.context, self.config.crop.mode)
        self.routes: Optional[Routes] = classifier.routes
        fitted = None
        if fus.fusion_file:  # fitted for one classifier and first stage: refused for others
            fitted = FittedFusion.load(fus.fusion_file)
            fitted.check(classifier, self.class_map.detector_classes, fus.fusion_file)
        self.rule = FusionRule(fus.mode, fus.nms_thresh, fus.background_drop, fitted)
        self.register_buffer("reclassify_mask", self.class_map.selection(sel.reclassify), persistent=False)
        calibration = dict(meta.extra.get("score_calibration") or {}) if sel.calibrate_gates else {}
        self.register_buffer("gate_factor", self.class_map.set_means(calibration), persistent=False)
        if not bool(self.reclassify_mask.any()):
            logger.warning("no detector class maps to a classifier class: every box passes through untouched "
                           "(detector classes %s, classifier classes %s)",
                           self.class_map.detector_classes[:10], self.class_map.classifier_classes[:10])

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_model(cls, model: nn.Module, meta: Mapping[str, Any], detector_classes: Optional[Sequence[str]] = None,
                   *, device: Any = None, precision: str = "fp32", config: Optional[SecondStageConfig] = None,
                   **flags: Any) -> "SecondStage":
        """A trained ``model`` (``nn.Module``) and its checkpoint meta (classes, input size, normalisation, crop
        spec). A file of any kind: ``SecondStage(crop_classifier.load_classifier(path), ...)``."""
        return cls(build_inference_classifier(model, meta, device=device, precision=precision), detector_classes,
                   config, **flags)

    # ------------------------------------------------------------------ properties
    @property
    def output_class_names(self) -> List[str]:
        return self.class_map.output_class_names

    @property
    def classifier_classes(self) -> List[str]:
        return self.class_map.classifier_classes

    @property
    def fusion(self) -> str:
        """The fusion rule's name (``replace`` | ``rescore`` | ``filter``)."""
        return self.config.fusion.mode

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
        lo, hi = self.config.selection.min_box_size, self.config.selection.max_box_size
        if lo > 0 or hi > 0:
            short, long = _box_sides(boxes)
            if lo > 0:
                ok &= short >= lo
            if hi > 0:
                ok &= long <= hi
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
        ``config.batching.crops_per_forward`` (one image with thousands of boxes never holds them all)."""
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
        chunk, pending, n_pending, probs = self.config.batching.crops_per_forward, [], 0, []

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

    def fuse(self, boxes: Tensor, det_classes: Tensor, det_scores: Tensor, probs: Tensor,
             classified: Tensor) -> FusedDetections:
        """The fusion half, for still images and tracks alike: gate calibration, the fusion rule, NMS.

        Args:
            boxes: ``[N, 4]`` XYXY pixels; det_classes: ``[N]`` detector class ids; det_scores: ``[N]``.
            probs: ``[N, K]`` classifier probabilities (a track's voted ones; rows where not classified ignored).
            classified: ``[N]`` bool: the box has probabilities.
        Returns:
            The kept boxes sorted by fused score; ``index`` maps each to its row here, ``dropped`` counts the
            others by reason; ``det_scores`` are the detector's own (whatever the gate calibration gave).
        """
        dev = boxes.device
        c, s = det_classes.long().to(dev), det_scores.to(dev).float()
        # A fitted fusion sets its own trust per class; the gate calibration is for the fixed rules.
        start = s if self.rule.fitted is not None else self.gated_scores(boxes.float(), c, s)
        r = fuse_image(boxes.float(), c, start, probs.to(dev).float(),
                       classified.to(dev), self.class_map, self.rule)
        r.det_scores = s[r.index]
        return r

    def run(self, images: Sequence[Tensor], boxes: Sequence[Tensor], det_classes: Sequence[Tensor],
            det_scores: Sequence[Tensor]) -> StageOutput:
        """Both steps for a batch of images: the fused detections and the crops each image sent."""
        _check_inputs(images, boxes, det_classes, det_scores, len(self.class_map.detector_classes))
        eligible = [self.eligible(b.float(), c.long(), img.shape[-2:]) for img, b, c in zip(images, boxes, det_classes)]
        probs_e = self.classify(images, [b[e] for b, e in zip(boxes, eligible)])
        K, out = self.class_map.num_probs, []
        for b, c, s, e, pe in zip(boxes, det_classes, det_scores, eligible, probs_e):
            probs = torch.zeros(b.shape[0], K, device=b.device)
            probs[e] = pe.to(b.device)
            out.append(self.fuse(b, c, s, probs, e.to(b.device)))
        return StageOutput(out, [int(e.sum()) for e in eligible])

    def forward(self, image: Any, detections: Any) -> Any:
        """One image (or a list of them) and its first-stage detections -> the kept detections.

        Args:
            image: an HxWx3 uint8 RGB numpy array or a ``[3, H, W]`` tensor; or a list of them.
            detections: a ``crop_classifier.Detections`` or an ``sv.Detections`` (``class_id`` indexes
                ``detector_classes``; ``confidence`` ``None`` reads as 1.0); a list of them for a list of images.
        Returns:
            The same type as given, the kept boxes in input order: ``class_id`` in ``output_class_names``,
            ``confidence`` the fused score, ``tracker_id`` and ``data`` carried over, plus ``data["index"]``
            (position in the input), ``data["class_name"]``, ``data["detector_class_id"]``,
            ``data["detector_confidence"]`` and ``data["classifier_confidence"]`` (NaN where not classified).
        """
        if isinstance(image, (list, tuple)):
            if not isinstance(detections, (list, tuple)) or len(detections) != len(image):
                raise ValueError(f"{len(image)} images need a list of {len(image)} detections")
            return self._call_many(list(image), list(detections))
        if isinstance(detections, (list, tuple)):
            raise ValueError("one image takes one Detections, not a list")
        return self._call_many([image], [detections])[0]

    def _call_many(self, images: List[Any], detections: List[Any]) -> List[Any]:
        ours = [Detections.from_supervision(d) if is_supervision(d) else d for d in detections]
        for i, d in enumerate(ours):
            if not isinstance(d, Detections):
                raise TypeError(f"detections {i}: expected crop_classifier.Detections or sv.Detections, got "
                                f"{type(d).__name__}")
        firsts = [d.to_image_detections() for d in ours]
        out = self.run([as_chw(im) for im in images], [torch.from_numpy(f.boxes) for f in firsts],
                       [torch.from_numpy(f.classes) for f in firsts], [torch.from_numpy(f.scores) for f in firsts])
        results = [self._as_detections(d, f.to("cpu")) for d, f in zip(ours, out.detections)]
        return [r.to_supervision() if is_supervision(d) else r for d, r in zip(detections, results)]

    def _as_detections(self, given: Detections, f: FusedDetections) -> Detections:
        f = f.select(torch.argsort(f.index))  # input order
        idx = f.index.numpy()
        names = np.array(self.output_class_names, dtype=object)
        data = {k: v[idx] for k, v in given.data.items()}
        data.update(index=idx, class_name=names[f.classes.numpy()].astype(str) if len(f) else np.zeros(0, str),
                    detector_class_id=f.det_classes.numpy(), detector_confidence=f.det_scores.numpy(),
                    classifier_confidence=f.cls_scores.numpy())
        return Detections(f.boxes.numpy(), f.classes.numpy(), f.scores.numpy(),
                          None if given.tracker_id is None else given.tracker_id[idx], data)

    def changed(self, r: FusedDetections) -> Tensor:
        """``[N]`` bool: boxes whose output class differs from the detector's class."""
        return r.classes != self.class_map.det_to_out.to(r.classes.device)[r.det_classes]


__all__ = ["SecondStage", "SecondStageConfig", "StageOutput", "as_chw"]
