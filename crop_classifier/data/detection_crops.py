"""Training crops from a first stage's own boxes: detections on the training images matched to the ground truth.

A detection with IoU >= ``pos_iou`` with a training object takes that object's class; one with IoU <
``neg_iou`` with every annotated box of its image (any class or size) is background (kept only when the
classifier has a background class); the rest are ambiguous and ignored. Exact duplicate boxes (Detectron2 emits
one per class hypothesis) count once. Then ``ratio`` detector crops per ground-truth crop are drawn once, with
a fixed seed, so every epoch trains on the same detector boxes (their look is the detector's, they are not
jittered); the ground-truth crops stay as they are.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

DETECTION_ANN_ID = -2  # the ann_id of a sample cut from a detector box


@dataclass(frozen=True)
class DetectionMatch:
    """How detections become samples (see module doc)."""

    pos_iou: float = 0.5
    neg_iou: float = 0.3
    ratio: float = 1.0  # detector crops per ground-truth crop (at most every matched one)
    background_label: Optional[int] = None  # None: no background class, low-overlap detections are dropped
    seed: int = 0

    def validate(self) -> "DetectionMatch":
        if not 0 < self.neg_iou <= self.pos_iou <= 1:
            raise ValueError(f"detection matching needs 0 < neg_iou <= pos_iou <= 1, got {self.neg_iou}, {self.pos_iou}")
        if self.ratio < 0:
            raise ValueError(f"detection ratio must be >= 0, got {self.ratio}")
        return self


def _label_image(path: str, dets: np.ndarray, samples: Sequence, objects: np.ndarray, m: DetectionMatch) -> List:
    dets = np.unique(np.asarray(dets, dtype=np.float32).reshape(-1, 4), axis=0)
    if not len(dets):
        return []
    labels = np.full(len(dets), -1, dtype=np.int64)
    if len(samples):
        gt = torch.from_numpy(np.stack([s[1] for s in samples]).astype(np.float32))
        best, idx = box_iou(torch.from_numpy(dets), gt).max(dim=1)
        pos = (best >= m.pos_iou).numpy()
        labels[pos] = np.array([samples[i][2] for i in idx.numpy()])[pos]
    if m.background_label is not None:
        overlap = (box_iou(torch.from_numpy(dets), torch.from_numpy(objects.astype(np.float32))).amax(dim=1).numpy()
                   if len(objects) else np.zeros(len(dets)))
        labels[(labels < 0) & (overlap < m.neg_iou)] = m.background_label
    return [(path, box, int(lab), DETECTION_ANN_ID) for box, lab in zip(dets, labels) if lab >= 0]


def detection_samples(detections: Mapping[str, np.ndarray], samples: Sequence,
                      objects: Mapping[str, np.ndarray], match: DetectionMatch) -> List:
    """Samples cut from detector boxes (``detections``: ``{image base name: XYXY [n, 4]}``) for the images of
    ``samples`` (the ground-truth crops, ``(path, box, label, ann_id)``), ``objects``: every annotated box per
    path; ``ratio * len(samples)`` of them at most, drawn with ``match.seed``."""
    match.validate()
    by_path: Dict[str, list] = {}
    for s in samples:
        if int(s[3]) >= 0:
            by_path.setdefault(s[0], []).append(s)
    out: List = []
    for path, gt in by_path.items():
        dets = detections.get(os.path.basename(path))
        if dets is not None:
            out.extend(_label_image(path, dets, gt, objects.get(path, np.zeros((0, 4))), match))
    take = min(len(out), int(round(match.ratio * len(samples))))
    chosen = np.sort(np.random.default_rng(match.seed).permutation(len(out))[:take])
    return [out[i] for i in chosen]
