"""``gt:ANNOTATIONS.json``: ground-truth boxes as the first stage (score 1), to evaluate the classifier alone."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from .base import FirstStage, ImageDetections, ImageRecord
from .coco_files import categories, images_by_key, load_annotations, xywh_to_xyxy


class GroundTruthBoxes(FirstStage):
    name = "gt"

    def __init__(self, annotations: str, *, include_crowd: bool = False):
        self.path = annotations
        data = load_annotations(annotations)
        self.class_names, self.category_ids = categories(data, annotations)
        cat_index = {cid: i for i, cid in enumerate(self.category_ids)}
        self.images = images_by_key(data, annotations)
        by_image: dict = {}
        for a in data["annotations"]:
            if a.get("iscrowd", 0) and not include_crowd:
                continue
            where = f"{annotations}: annotation {a.get('id', '?')}"
            if a.get("category_id") not in cat_index:
                raise ValueError(f"{where}: category_id {a.get('category_id')!r} is not among the categories")
            by_image.setdefault(a["image_id"], []).append((xywh_to_xyxy(a.get("bbox"), where), cat_index[a["category_id"]]))
        self.by_image = by_image

    def image_id(self, record: ImageRecord) -> int:
        img = self.images.get(record.key)
        if img is None:
            raise KeyError(f"{record.file_name}: not an image of {self.path} (no image entry named {record.key})")
        return int(img["id"])

    def detect(self, records: Sequence[ImageRecord]) -> List[ImageDetections]:
        out = []
        for r in records:
            anns = self.by_image.get(self.image_id(r), [])
            boxes = np.array([b for b, _ in anns], dtype=np.float32).reshape(-1, 4)
            classes = np.array([c for _, c in anns], dtype=np.int64)
            out.append(ImageDetections(boxes, classes, np.ones(len(anns), dtype=np.float32)))
        return out
