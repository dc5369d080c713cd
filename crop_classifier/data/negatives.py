"""Background training crops: random boxes that overlap no object (IoU < ``max_iou`` with every one).

A negative sample is a placeholder ``(image_path, NaN box, background_label, NEGATIVE_ANN_ID)``; the dataset
draws its box when it crops the image (``random_negative_boxes``), from the epoch's generator like the jitter,
so every epoch sees other negatives and a seeded run repeats. Sizes follow the image's objects (an object's
sides scaled by up to 2x either way), so background crops are at the scales the detector proposes.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch
from torchvision.ops import box_iou

NEGATIVE_ANN_ID = -1


def is_negative(sample) -> bool:
    return int(sample[3]) == NEGATIVE_ANN_ID


def add_negative_samples(samples: Sequence, ratio: float, label: int) -> List:
    """``samples`` followed by about ``ratio`` negative placeholders per object, image by image (counts are
    rounded cumulatively, so the total is ``round(ratio * len(samples))`` even with one object per image)."""
    if ratio < 0:
        raise ValueError(f"negative ratio must be >= 0, got {ratio}")
    per_image: Dict[str, int] = {}
    for s in samples:
        per_image[s[0]] = per_image.get(s[0], 0) + 1
    out, carry, done = list(samples), 0.0, 0
    nan_box = np.full(4, np.nan, dtype=np.float32)
    for path, n in per_image.items():
        carry += ratio * n
        k = int(round(carry)) - done
        done += k
        out.extend((path, nan_box, int(label), NEGATIVE_ANN_ID) for _ in range(k))
    return out


def random_negative_boxes(image_hw, objects: np.ndarray, n: int, max_iou: float, rng: np.random.Generator,
                          *, tries: int = 32) -> np.ndarray:
    """``n`` boxes (XYXY float32) inside the image, each with IoU < ``max_iou`` with every box of ``objects``.

    Each negative takes the first of ``tries`` candidates that qualifies; when none does (objects cover the
    image) the candidate with the least overlap is used.
    """
    H, W = float(image_hw[0]), float(image_hw[1])
    objects = np.asarray(objects, dtype=np.float64).reshape(-1, 4)
    if n <= 0:
        return np.zeros((0, 4), np.float32)
    if len(objects):
        ref = objects[rng.integers(len(objects), size=(n, tries))]
        w = (ref[..., 2] - ref[..., 0]) * np.exp(rng.uniform(-0.7, 0.7, (n, tries)))
        h = (ref[..., 3] - ref[..., 1]) * np.exp(rng.uniform(-0.7, 0.7, (n, tries)))
    else:
        w = rng.uniform(0.1, 0.5, (n, tries)) * W
        h = rng.uniform(0.1, 0.5, (n, tries)) * H
    w, h = np.clip(w, 4.0, W), np.clip(h, 4.0, H)
    x0, y0 = rng.uniform(0, 1, (n, tries)) * (W - w), rng.uniform(0, 1, (n, tries)) * (H - h)
    cand = np.stack([x0, y0, x0 + w, y0 + h], -1)  # [n, tries, 4]
    if not len(objects):
        return cand[:, 0].astype(np.float32)
    iou = box_iou(torch.from_numpy(cand.reshape(-1, 4)), torch.from_numpy(objects)).amax(dim=1)
    iou = iou.reshape(n, tries).numpy()
    ok = iou < max_iou
    pick = np.where(ok.any(1), np.argmax(ok, axis=1), np.argmin(iou, axis=1))
    return cand[np.arange(n), pick].astype(np.float32)
