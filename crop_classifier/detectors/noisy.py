"""A realistic noisy first stage made from ground truth: what a fusion must not make worse.

Every object becomes a detection whose box is jittered (each side by up to ``jitter`` of the box size), whose
class is wrong with probability ``wrong_class``, and whose score is drawn higher for a right class than for a
wrong one; ``false_positives`` random boxes per image with low scores are added. The result is a COCO results
list (``file_name`` and ``category_name`` included) that ``--detector detections:FILE.json`` reads.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping

import numpy as np


def noisy_detections(coco: Mapping[str, Any], *, seed: int = 0, jitter: float = 0.15, wrong_class: float = 0.3,
                     false_positives: int = 3) -> List[Dict[str, Any]]:
    """COCO results of a noisy first stage over ``coco``'s images (see module doc).

    Args:
        coco: a COCO annotations dict (``images``, ``annotations``, ``categories``).
        seed: the random stream; the same seed gives the same detections.
    Returns:
        COCO result dicts with ``image_id``, ``file_name``, ``category_id``, ``category_name``, ``bbox``, ``score``.
    """
    rng = np.random.default_rng(seed)
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    names = {c["id"]: c["name"] for c in cats}
    images = {im["id"]: im for im in coco["images"]}
    out: List[Dict[str, Any]] = []

    def add(image_id: int, box, cid: int, score: float) -> None:
        out.append({"image_id": int(image_id), "file_name": images[image_id]["file_name"], "category_id": int(cid),
                    "category_name": names[cid], "bbox": [round(float(v), 2) for v in box], "score": round(score, 4)})

    for a in coco["annotations"]:
        if a.get("iscrowd", 0) or a["image_id"] not in images:
            continue
        x, y, w, h = a["bbox"]
        dx1, dy1, dx2, dy2 = rng.uniform(-jitter, jitter, 4) * [w, h, w, h]
        box = [x + dx1, y + dy1, max(w + dx2 - dx1, 1.0), max(h + dy2 - dy1, 1.0)]
        wrong = rng.random() < wrong_class
        cid = int(rng.choice([c["id"] for c in cats if c["id"] != a["category_id"]])) if wrong and len(cats) > 1 \
            else int(a["category_id"])
        add(a["image_id"], box, cid, float(rng.uniform(0.3, 0.8) if wrong else rng.uniform(0.5, 1.0)))
    for image_id, im in images.items():
        W, H = float(im["width"]), float(im["height"])
        for _ in range(false_positives):
            w, h = rng.uniform(0.05, 0.3) * W, rng.uniform(0.05, 0.3) * H
            add(image_id, [rng.uniform(0, W - w), rng.uniform(0, H - h), w, h], int(rng.choice(list(names))),
                float(rng.uniform(0.05, 0.6)))
    return out


__all__ = ["noisy_detections"]
