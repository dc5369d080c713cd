"""Fusion of the detector's and the classifier's opinions, per box, and the NMS that follows ``replace``.

For a box of detector class ``d`` (score ``s``) whose crop gets classifier probabilities ``p`` and whose
class set is ``S = map[d]`` (``class_map.ClassMap``):

- ``replace``: class ``k* = argmax_{k in S} p_k``, score ``s * p_k*`` (the decision is taken within S);
- ``rescore``: class ``d``, score ``s * sum_{k in S} p_k`` (the classifier's probability of ``d``);
- ``filter``: YOLOv5's ``apply_classifier``: the box is dropped when the classifier's overall argmax is not
  in ``S``; class and score stay the detector's.

With a background class (``class_map.background_index``; ``p`` is then the full softmax, background
included, so ``sum_{k in S} p_k = 1 - p_bg`` when S holds every object class):

- ``rescore``: the same rule, ``s * sum_{k in S} p_k``: background mass lowers every score;
- ``replace``: the decision is taken over ``S ∪ {background}``; a box whose best is the background is
  dropped when ``p_bg > background_drop`` (``FusionRule``; 1 never drops), else it keeps ``k*`` (the best
  within S) and score ``s * p_k*``, which the background mass has already lowered;
- ``filter``: the background is never in S, so a box whose overall argmax is the background is dropped.

``replace`` can merge two detector hypotheses of one object into the same class, so it ends with a
class-wise NMS (``nms_thresh``; Detectron2's test-time default 0.5, ``0`` turns it off) that removes a box only
where the second stage created the overlap: one of the two boxes changed class. Two boxes the first stage kept
with their own classes never suppress each other (two zebras side by side stay two). Boxes that were not
classified (unmapped class, class not selected, size gate, a box that cannot be cropped) keep their
detector class and score, translated to the output id of the same name; they are never dropped (a box a
size gate kept from the classifier comes in with its score already calibrated: ``stage.SecondStage.gated_scores``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from ..structures import FusedDetections
from .class_map import ClassMap
from .fitted import FittedFusion

FUSION_MODES = ("replace", "rescore", "filter")


def check_fusion_mode(mode: str) -> str:
    if mode not in FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; valid: {', '.join(FUSION_MODES)}")
    return mode


@dataclass(frozen=True)
class FusionRule:
    """How one image's boxes are fused: the mode, the NMS after ``replace``, and (with a background class)
    the background probability above which ``replace`` drops a box whose best class is the background."""

    mode: str = "replace"
    nms_thresh: float = 0.5
    background_drop: float = 0.5
    fitted: Optional[FittedFusion] = None  # a fitted fusion (fitted.py) replaces the mode's rule

    def validate(self) -> "FusionRule":
        check_fusion_mode(self.mode)
        if not 0 <= self.background_drop <= 1:
            raise ValueError(f"background_drop must be in [0, 1] (1: never drop), got {self.background_drop}")
        return self


def fuse(
    det_classes: Tensor,
    det_scores: Tensor,
    probs: Tensor,
    classified: Tensor,
    class_map: ClassMap,
    mode: str,
    background_drop: float = 0.5,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pure fusion of one batch of boxes (see module doc).

    ``det_classes`` ``[N]`` detector class ids, ``det_scores`` ``[N]``, ``probs`` ``[N, K]`` classifier
    probabilities (rows of boxes that were not classified are ignored), ``classified`` ``[N]`` bool.
    Returns ``(classes, scores, keep, cls_scores)``: output class ids, fused scores, a keep mask
    (``filter`` drops disagreements) and the classifier probability each decision rests on (NaN where
    the box was not classified).
    """
    check_fusion_mode(mode)
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
        if class_map.has_background:  # the best over S and the background is the background: drop above the bar
            p_bg = p[:, class_map.background_index]
            keep = ~(c & (p_bg > best_p) & (p_bg > background_drop))
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


def class_nms(r: FusedDetections, thresh: float, changed: Optional[Tensor] = None) -> FusedDetections:
    """Class-wise greedy NMS (``0 < thresh < 1``) where a pair may suppress only if one of the two boxes is
    ``changed`` (``[N]`` bool: its class is not the detector's; ``None``: every box, plain class-wise NMS),
    then sorted by score. Non-finite boxes take no part (one NaN would poison every IoU); they pass."""
    order = torch.argsort(r.scores, descending=True, stable=True)
    if not 0 < thresh < 1 or not len(r):
        return r.select(order)
    changed = torch.ones(len(r), dtype=torch.bool, device=r.boxes.device) if changed is None else changed.bool()
    finite = torch.isfinite(r.boxes).all(dim=1)
    if changed.all():  # plain class-wise NMS: torchvision's kernel
        fi = torch.nonzero(finite).flatten()
        kept = torch.cat([fi[batched_nms(r.boxes[fi], r.scores[fi], r.classes[fi], thresh)],
                          torch.nonzero(~finite).flatten()])
        return r.select(kept[torch.argsort(r.scores[kept], descending=True, stable=True)])
    b, cl, ch, fin = r.boxes[order], r.classes[order], changed[order], finite[order]
    iou = box_iou(torch.nan_to_num(b), torch.nan_to_num(b))
    # conflict[i, j]: box j (ranked above i) may suppress i
    conflict = (iou > thresh) & (cl[:, None] == cl[None, :]) & (ch[:, None] | ch[None, :]) \
        & fin[:, None] & fin[None, :] & torch.ones_like(iou, dtype=torch.bool).tril(-1)
    keep = torch.ones(len(r), dtype=torch.bool, device=b.device)
    for i in torch.nonzero(conflict.any(dim=1)).flatten().tolist():
        keep[i] = not bool((conflict[i] & keep).any())
    return r.select(order[keep])


def fuse_image(
    boxes: Tensor,
    det_classes: Tensor,
    det_scores: Tensor,
    probs: Tensor,
    classified: Tensor,
    class_map: ClassMap,
    rule: FusionRule,
) -> FusedDetections:
    """One image's boxes -> its output: fused, ``filter``/background drops, NMS after ``replace`` among boxes
    whose class changed (see ``class_nms``), sorted by score; ``dropped`` counts the removed boxes by reason."""
    if rule.fitted is not None:
        classes, scores, keep, cls_scores = rule.fitted.apply(det_classes, det_scores, probs, classified, class_map)
    else:
        classes, scores, keep, cls_scores = fuse(det_classes, det_scores, probs, classified, class_map, rule.mode,
                                                 rule.background_drop)
    r = FusedDetections(
        boxes=boxes.float(), classes=classes, scores=scores, det_classes=det_classes, det_scores=det_scores.float(),
        cls_probs=probs, cls_scores=cls_scores, classified=classified,
        index=torch.arange(boxes.shape[0], device=boxes.device),
    ).select(keep)
    n_fused = len(r)
    if (rule.mode == "replace" or rule.fitted is not None) and rule.nms_thresh > 0:
        changed = r.classes != class_map.det_to_out.to(r.classes.device)[r.det_classes]
        r = class_nms(r, rule.nms_thresh, changed)
    else:
        r = class_nms(r, 0.0)
    r.dropped = {"filter" if rule.mode == "filter" else "background": int(boxes.shape[0] - n_fused),
                 "nms": n_fused - len(r)}
    r.dropped = {k: v for k, v in r.dropped.items() if v}
    return r
