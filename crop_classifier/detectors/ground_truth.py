"""``gt:ANNOTATIONS.json``: ground-truth boxes as the first stage (score 1), to evaluate the classifier alone."""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from .base import FirstStage, ImageDetections, ImageRecord
from .coco_files import categories, images_by_key, int_field, load_annotations, log_entry_errors, xywh_to_xyxy


class GroundTruthBoxes(FirstStage):
    name = "gt"

    def __init__(self, annotations: str, *, include_crowd: bool = False):
        self.path = annotations
        data = load_annotations(annotations)
        self.class_names, self.category_ids = categories(data, annotations)
        cat_index = {cid: i for i, cid in enumerate(self.category_ids)}
        self.images = images_by_key(data, annotations)
        ids = {int(img["id"]) for img in self.images.values()}
        by_image: dict = {}
        # Malformed annotations are skipped, each named in ``errors`` (the runner reports them and fails);
        # every good one is used.
        self.errors: List[str] = []
        for i, a in enumerate(data["annotations"]):
            try:
                if not isinstance(a, dict):
                    raise ValueError(f"{annotations}: annotations[{i}]: expected a JSON object, got {type(a).__name__}")
                where = f"{annotations}: annotation id {a['id']}" if "id" in a else f"{annotations}: annotations[{i}]"
                iid, cid = int_field(a, "image_id", where), int_field(a, "category_id", where)
                if "bbox" not in a:
                    raise ValueError(f"{where}: missing key 'bbox'")
                if iid not in ids:
                    raise ValueError(f"{where}: image_id {iid} is not in 'images'")
                if cid not in cat_index:
                    raise ValueError(f"{where}: category_id {cid} is not among the categories")
                box = xywh_to_xyxy(a["bbox"], where)
            except ValueError as e:
                self.errors.append(str(e))
                continue
            if a.get("iscrowd", 0) and not include_crowd:
                continue
            by_image.setdefault(iid, []).append((box, cat_index[cid]))
        log_entry_errors(annotations, self.errors)
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
