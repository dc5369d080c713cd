"""Detector-agnostic second stage: crop every kept box from the full-resolution image, classify, fuse.

Every first stage (the Detectron2 meta-architecture in ``crop_classifier.d2``, a precomputed detections
file, ground-truth boxes) hands this module the same thing, so the fusion rules live here only:

* ``ClassMap`` says which classifier classes each detector class stands for (by name). A detector class
  maps to a *set* of classifier classes: ``{"vehicle": ["car", "bus", "truck"]}`` is coarse-to-fine,
  ``"*"`` means every classifier class, a ``"*"`` key is the entry of every detector class not named
  (``"*=*"``: the classifier may pick any of its classes for any box, the same-class-space case), and
  without an entry a detector class maps to the classifier class of the same name. A detector class
  with none of these passes through untouched.
* Fusion, for a box of detector class ``d`` (score ``s``) whose crop gets classifier probabilities ``p``
  and whose set is ``S = map[d]``:
    - ``replace``: class ``k* = argmax_{k in S} p_k``, score ``s * p_k*`` (the decision is taken within S);
    - ``rescore``: class ``d``, score ``s * sum_{k in S} p_k`` (the classifier's probability of ``d``);
    - ``filter``: YOLOv5's ``apply_classifier``: the box is dropped when the classifier's overall argmax
      is not in ``S``; class and score stay the detector's.
  ``replace`` can merge two detector hypotheses of one object into the same class, so it ends with a
  class-wise NMS (``nms_thresh``; Detectron2's test-time default 0.5, ``0`` turns it off).
* Output class ids: the output class space is the classifier's classes, in the checkpoint's order
  (ids ``0 .. K-1``), followed by every detector class whose name is not a classifier class, in the
  detector's order (ids ``K ..``). Boxes of mapped detector classes that are re-classified end up in the
  classifier's part; boxes that pass through (unmapped class, class not selected, size gate, or a box
  that cannot be cropped: NaN/inf, inverted, off the image per ``crops.valid_boxes_mask``) keep their
  detector class and score, translated to the output id of the same name; they are never dropped.

Crops come from the original-resolution image (``crop_classifier.crops.extract_crops``), with the context
margin and crop mode the classifier was trained with (checkpoint meta ``crop``) unless overridden.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, fields
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

from .structures import IMAGENET_MEAN, IMAGENET_STD, FusedDetections

logger = logging.getLogger(__name__)

FUSION_MODES = ("replace", "rescore", "filter")
ALL_CLASSES = "*"

MapValue = Union[str, Sequence[str]]


# --------------------------------------------------------------------------------------------- class map
def parse_class_map(spec: Union[None, str, Mapping[str, MapValue], Sequence[Sequence[str]]]) -> Dict[str, List[str]]:
    """Normalises the ways a class map is written into ``{detector_name: [classifier names or "*"]}``.

    Accepted: a dict ``{"vehicle": ["car", "bus"]}`` (or ``"car,bus"``), a list of pairs
    ``[["vehicle", "car,bus"], ...]`` (what a Detectron2 YAML holds), or a string
    ``"vehicle=car,bus;person=person"`` (what a command line holds).
    """
    if spec is None or spec == "" or spec == [] or spec == {}:
        return {}
    if isinstance(spec, str):
        pairs = []
        for item in spec.split(";"):
            item = item.strip()
            if not item:
                continue
            if "=" not in item:
                raise ValueError(f"class map entry {item!r}: expected DETECTOR_CLASS=CLASS[,CLASS...]")
            det, _, targets = item.partition("=")
            pairs.append((det.strip(), targets))
    elif isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        pairs = []
        for item in spec:
            if len(item) != 2:
                raise ValueError(f"class map entry {item!r}: expected a pair [detector_class, classifier_classes]")
            pairs.append((item[0], item[1]))
    out: Dict[str, List[str]] = {}
    for det, targets in pairs:
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",")]
        targets = [str(t).strip() for t in targets if str(t).strip()]
        if not targets:
            raise ValueError(f"class map entry for {det!r} names no classifier class")
        if det in out:
            raise ValueError(f"class map names detector class {det!r} twice")
        out[str(det)] = targets
    return out


class ClassMap:
    """Detector classes -> sets of classifier classes, and the output class space (see module doc)."""

    def __init__(
        self,
        detector_classes: Sequence[str],
        classifier_classes: Sequence[str],
        mapping: Union[None, str, Mapping[str, MapValue], Sequence[Sequence[str]]] = None,
    ):
        self.detector_classes = [str(c) for c in detector_classes]
        self.classifier_classes = [str(c) for c in classifier_classes]
        for what, names in (("detector", self.detector_classes), ("classifier", self.classifier_classes)):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} class names must be unique; repeated: {dup}")
        mapping = parse_class_map(mapping)
        cls_index = {n: i for i, n in enumerate(self.classifier_classes)}
        det_index = {n: i for i, n in enumerate(self.detector_classes)}
        unknown = [d for d in mapping if d not in det_index and d != ALL_CLASSES]
        if unknown:
            raise ValueError(f"class map names detector classes {unknown} that the detector does not have "
                             f"(detector classes: {self.detector_classes[:20]}{' ...' if len(self.detector_classes) > 20 else ''})")
        D, K = len(self.detector_classes), len(self.classifier_classes)
        sets = torch.zeros(D, K, dtype=torch.bool)
        for d, name in enumerate(self.detector_classes):
            # A named entry, else the "*" entry for every detector class not named, else same-name matching.
            key = name if name in mapping else ALL_CLASSES if ALL_CLASSES in mapping else None
            if key is not None:
                for target in mapping[key]:
                    if target == ALL_CLASSES:
                        sets[d, :] = True
                    elif target in cls_index:
                        sets[d, cls_index[target]] = True
                    else:
                        raise ValueError(f"class map entry {key!r} -> {target!r}: the classifier has no class "
                                         f"{target!r} (classifier classes: {self.classifier_classes})")
            elif name in cls_index:
                sets[d, cls_index[name]] = True
        self.sets = sets
        self.output_class_names = self.classifier_classes + [n for n in self.detector_classes if n not in cls_index]
        out_index = {n: i for i, n in enumerate(self.output_class_names)}
        self.det_to_out = torch.tensor([out_index[n] for n in self.detector_classes], dtype=torch.long)

    @property
    def mapped(self) -> Tensor:
        """``[D]`` bool: detector classes that have at least one classifier class."""
        return self.sets.any(dim=1)

    def targets(self, detector_class: str) -> List[str]:
        d = self.detector_classes.index(detector_class)
        return [self.classifier_classes[k] for k in torch.nonzero(self.sets[d]).flatten().tolist()]

    def describe(self) -> Dict[str, List[str]]:
        return {d: self.targets(d) for d in self.detector_classes if self.targets(d)}


# --------------------------------------------------------------------------------------------- fusion
def fuse(
    det_classes: Tensor,
    det_scores: Tensor,
    probs: Tensor,
    classified: Tensor,
    class_map: ClassMap,
    mode: str,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pure fusion of one batch of boxes (see module doc).

    ``det_classes`` ``[N]`` detector class ids, ``det_scores`` ``[N]``, ``probs`` ``[N, K]`` classifier
    probabilities (rows of boxes that were not classified are ignored), ``classified`` ``[N]`` bool.
    Returns ``(classes, scores, keep, cls_scores)``: output class ids, fused scores, a keep mask
    (``filter`` drops disagreements) and the classifier probability each decision rests on (NaN where
    the box was not classified).
    """
    if mode not in FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; valid: {', '.join(FUSION_MODES)}")
    n = det_classes.numel()
    device = det_scores.device
    sets = class_map.sets.to(device)[det_classes]  # [N, K]
    classes = class_map.det_to_out.to(device)[det_classes].clone()
    scores = det_scores.clone().float()
    keep = torch.ones(n, dtype=torch.bool, device=device)
    cls_scores = torch.full((n,), math.nan, device=device)
    if n == 0 or not bool(classified.any()):
        return classes, scores, keep, cls_scores
    c = classified & sets.any(dim=1)
    p = probs.float()
    if mode == "replace":
        within = p.masked_fill(~sets, -1.0)  # the decision is taken within the detector class's set
        best_p, best_k = within.max(dim=1)
        classes[c] = best_k[c]  # classifier classes are the first K output ids
        scores[c] = scores[c] * best_p[c]
        cls_scores[c] = best_p[c]
    elif mode == "rescore":
        p_set = (p * sets).sum(dim=1)
        scores[c] = scores[c] * p_set[c]
        cls_scores[c] = p_set[c]
    else:  # filter
        top = p.argmax(dim=1)
        agree = sets.gather(1, top[:, None]).squeeze(1)
        keep = ~c | agree
        cls_scores[c] = (p * sets).sum(dim=1)[c]
    return classes, scores, keep, cls_scores


# --------------------------------------------------------------------------------------------- results
def _box_sides(boxes: Tensor) -> Tuple[Tensor, Tensor]:
    wh = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    return wh.min(dim=1).values, wh.max(dim=1).values


# --------------------------------------------------------------------------------------------- the stage
class SecondStage(nn.Module):
    """Crops -> classifier -> fusion, for any first stage.

    ``images``: list of ``[3, H, W]`` RGB tensors (uint8, or float in [0, 1]) at original resolution;
    detections per image: ``boxes`` ``[N, 4]`` XYXY pixels of that image, ``classes`` ``[N]`` detector
    class ids, ``scores`` ``[N]``.
    """

    def __init__(
        self,
        classifier: nn.Module,
        classifier_classes: Sequence[str],
        detector_classes: Sequence[str],
        *,
        input_size: Optional[int] = None,
        class_map: Union[None, str, Mapping[str, MapValue], Sequence[Sequence[str]]] = None,
        fusion: str = "replace",
        context: float = 0.0,
        crop_mode: str = "square",
        min_size: float = 0.0,
        max_size: float = 0.0,
        reclassify: Optional[Iterable[str]] = None,
        max_crops_per_forward: int = 64,
        nms_thresh: float = 0.5,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        channels_last: bool = True,
    ):
        super().__init__()
        if fusion not in FUSION_MODES:
            raise ValueError(f"unknown fusion mode {fusion!r}; valid: {', '.join(FUSION_MODES)}")
        if max_crops_per_forward < 1:
            raise ValueError(f"max_crops_per_forward must be >= 1, got {max_crops_per_forward}")
        if min_size < 0 or max_size < 0 or (max_size and max_size < min_size):
            raise ValueError(f"box size gates: need 0 <= min_size <= max_size (0 = no limit); got {min_size}, {max_size}")
        self.classifier = classifier.eval()
        # NHWC convolutions: about 2x faster for this network on CPU (oneDNN), and what tensor cores want.
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.classifier.to(memory_format=torch.channels_last)
        for p in self.classifier.parameters():
            p.requires_grad_(False)
        self.class_map = ClassMap(detector_classes, classifier_classes, class_map)
        self.input_size = int(input_size if input_size is not None else getattr(classifier, "input_size"))
        self.fusion = fusion
        self.context = float(context)
        self.crop_mode = crop_mode
        self.min_size, self.max_size = float(min_size), float(max_size)
        self.max_crops_per_forward = int(max_crops_per_forward)
        self.nms_thresh = float(nms_thresh)
        reclassify_mask = self.class_map.mapped.clone()
        if reclassify is not None:
            reclassify = [r for r in reclassify if r]
        if reclassify:
            unknown = [r for r in reclassify if r not in self.class_map.detector_classes]
            if unknown:
                raise ValueError(f"classes to re-classify {unknown} are not detector classes")
            chosen = torch.tensor([d in set(reclassify) for d in self.class_map.detector_classes], dtype=torch.bool)
            unmapped = [d for d in reclassify if not bool(self.class_map.mapped[self.class_map.detector_classes.index(d)])]
            if unmapped:
                raise ValueError(f"classes to re-classify {unmapped} map to no classifier class; add them to the class map")
            reclassify_mask &= chosen
        self.register_buffer("reclassify_mask", reclassify_mask, persistent=False)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        if not bool(self.reclassify_mask.any()):
            logger.warning("no detector class maps to a classifier class: every box passes through untouched "
                           "(detector classes %s, classifier classes %s)",
                           self.class_map.detector_classes[:10], self.class_map.classifier_classes[:10])

    # ------------------------------------------------------------------ construction from a checkpoint
    @classmethod
    def from_checkpoint(
        cls,
        path: Union[str, os.PathLike],
        detector_classes: Sequence[str],
        *,
        arch: Optional[str] = None,
        device: Any = "cpu",
        context: Optional[float] = None,
        crop_mode: Optional[str] = None,
        **kwargs: Any,
    ) -> "SecondStage":
        """Classes, input size, normalisation and crop semantics come from the checkpoint's metadata."""
        from .models import classifier_from_checkpoint

        model, meta = classifier_from_checkpoint(path, map_location=device, expected_meta={"arch": arch} if arch else None)
        return cls.from_model(model, meta, detector_classes, context=context, crop_mode=crop_mode, **kwargs).to(device)

    @classmethod
    def from_model(cls, model: nn.Module, meta: Mapping[str, Any], detector_classes: Sequence[str], *,
                   context: Optional[float] = None, crop_mode: Optional[str] = None, **kwargs: Any) -> "SecondStage":
        crop = dict(meta.get("crop") or {})
        return cls(
            model,
            meta["class_names"],
            detector_classes,
            input_size=int(meta["input_size"]),
            context=float(crop.get("context", 0.0) if context is None else context),
            crop_mode=str(crop.get("mode", "square") if crop_mode is None else crop_mode),
            mean=meta.get("mean", IMAGENET_MEAN),
            std=meta.get("std", IMAGENET_STD),
            **kwargs,
        )

    # ------------------------------------------------------------------ properties
    @property
    def output_class_names(self) -> List[str]:
        return self.class_map.output_class_names

    @property
    def classifier_classes(self) -> List[str]:
        return self.class_map.classifier_classes

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def train(self, mode: bool = True) -> "SecondStage":
        super().train(mode)
        self.classifier.eval()  # frozen: BN statistics must not drift while a detector trains around it
        return self

    # ------------------------------------------------------------------ steps
    def eligible(self, boxes: Tensor, det_classes: Tensor) -> Tensor:
        """``[N]`` bool: boxes that go through the classifier (class selected and mapped, size gates passed)."""
        ok = self.reclassify_mask.to(det_classes.device)[det_classes]
        if self.min_size > 0 or self.max_size > 0:
            short, long = _box_sides(boxes)
            if self.min_size > 0:
                ok &= short >= self.min_size
            if self.max_size > 0:
                ok &= long <= self.max_size
        return ok

    @torch.no_grad()
    def classify(self, images: Sequence[Tensor], boxes: Sequence[Tensor]) -> List[Tensor]:
        """Class probabilities ``[N_i, K]`` for the crops of every image, in chunks of ``max_crops_per_forward``."""
        from .crops import extract_crops

        if len(images) != len(boxes):
            raise ValueError(f"{len(images)} images but {len(boxes)} box lists")
        K = len(self.classifier_classes)
        chunks: List[Tensor] = []
        pending: List[Tensor] = []
        n_pending = 0
        counts = []
        out: List[Tensor] = []

        def flush() -> None:
            nonlocal pending, n_pending
            if n_pending:
                x = torch.cat(pending)
                x = (x - self.mean) / self.std
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                chunks.append(torch.softmax(self.classifier(x).float(), dim=1))
            pending, n_pending = [], 0

        for i, (image, b) in enumerate(zip(images, boxes)):
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(f"image {i}: expected a [3, H, W] RGB tensor, got shape {tuple(image.shape)}")
            counts.append(int(b.shape[0]))
            if b.shape[0] == 0:
                continue
            image = image.to(self.device)
            b = b.to(self.device, torch.float32)
            # Crop piecewise so one image with thousands of boxes never holds them all at once.
            start = 0
            while start < b.shape[0]:
                take = b[start:start + self.max_crops_per_forward - n_pending]
                crops = extract_crops(image, take, self.input_size, context=self.context, mode=self.crop_mode)
                pending.append(crops.float())
                n_pending += take.shape[0]
                start += take.shape[0]
                if n_pending >= self.max_crops_per_forward:
                    flush()
        flush()
        probs = torch.cat(chunks) if chunks else torch.zeros(0, K, device=self.device)
        for n in counts:
            out.append(probs[:n])
            probs = probs[n:]
        return out

    def forward(
        self,
        images: Sequence[Tensor],
        boxes: Sequence[Tensor],
        det_classes: Sequence[Tensor],
        det_scores: Sequence[Tensor],
    ) -> List[FusedDetections]:
        if not (len(images) == len(boxes) == len(det_classes) == len(det_scores)):
            raise ValueError("images, boxes, classes and scores must have one entry per image")
        K = len(self.classifier_classes)
        D = len(self.class_map.detector_classes)
        eligible, crop_boxes = [], []
        for i, (b, c) in enumerate(zip(boxes, det_classes)):
            if b.dim() != 2 or b.shape[1] != 4 or c.shape[0] != b.shape[0]:
                raise ValueError(f"image {i}: boxes must be [N, 4] with one class per box; got {tuple(b.shape)} "
                                 f"and {tuple(c.shape)}")
            if c.numel() and (int(c.min()) < 0 or int(c.max()) >= D):
                raise ValueError(f"image {i}: detector class id {int(c.max()) if int(c.max()) >= D else int(c.min())} "
                                 f"is outside the {D} detector classes")
            e = self.eligible(b.float(), c.long())
            if i < len(images) and b.shape[0]:
                # NaN/inf, inverted or off-image boxes cannot be cropped: they are never classified and
                # pass through untouched (detector class and score), like boxes outside the size gates.
                from .crops import valid_boxes_mask

                e = e & valid_boxes_mask(b.detach(), tuple(images[i].shape[-2:])).to(e.device)
            eligible.append(e)
            crop_boxes.append(b[e])
        probs_e = self.classify(images, crop_boxes)
        self.last_num_crops = [int(b.shape[0]) for b in crop_boxes]  # per image, for throughput reports
        results = []
        for b, c, s, e, pe in zip(boxes, det_classes, det_scores, eligible, probs_e):
            n = b.shape[0]
            dev = b.device
            probs = torch.zeros(n, K, device=dev)
            probs[e] = pe.to(dev)
            c = c.long().to(dev)
            classes, scores, keep, cls_scores = fuse(c, s.to(dev), probs, e.to(dev), self.class_map, self.fusion)
            r = FusedDetections(
                boxes=b.float(), classes=classes, scores=scores, det_classes=c, det_scores=s.float().to(dev),
                cls_probs=probs, cls_scores=cls_scores, classified=e.to(dev),
                index=torch.arange(n, device=dev),
            ).select(keep)
            if self.fusion == "replace" and 0 < self.nms_thresh < 1 and len(r):
                from torchvision.ops import batched_nms

                # batched_nms offsets boxes by the largest coordinate: one NaN/inf box would poison
                # every IoU, so only finite boxes take part; the others pass through.
                finite = torch.isfinite(r.boxes).all(dim=1)
                fi = torch.nonzero(finite).flatten()
                kept = fi[batched_nms(r.boxes[fi], r.scores[fi], r.classes[fi], self.nms_thresh)]
                kept = torch.cat([kept, torch.nonzero(~finite).flatten()])
                r = r.select(kept[torch.argsort(r.scores[kept], descending=True, stable=True)])
            else:
                r = r.select(torch.argsort(r.scores, descending=True))
            results.append(r)
        return results

    def changed(self, r: FusedDetections) -> Tensor:
        """``[N]`` bool: boxes whose output class differs from the detector's class."""
        return r.classes != self.class_map.det_to_out.to(r.classes.device)[r.det_classes]
