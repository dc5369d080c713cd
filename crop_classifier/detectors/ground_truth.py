"""``gt:ANNOTATIONS.json``: ground-truth boxes as the first stage (score 1), to evaluate the classifier alone."""
from __future__ import annotations

import os
from typing import List, Sequence, Union

import numpy as np

from ..coco_io import CocoFile, load_coco
from .base import FirstStage, ImageDetections, ImageRecord


class GroundTruthBoxes(FirstStage):
    """``annotations``: a path (parsed once per process, ``coco_io.load_coco``) or an already parsed ``CocoFile``.

    Malformed entries of the file are skipped and named in ``errors`` (the runner reports them and fails);
    every good one is used. Crowd regions are left out unless ``include_crowd``.
    """

    name = "gt"

    def __init__(self, annotations: Union[str, "os.PathLike[str]", CocoFile], *, include_crowd: bool = False):
        self.coco = annotations if isinstance(annotations, CocoFile) else load_coco(annotations)
        self.path = self.coco.path
        self.class_names: List[str] = list(self.coco.class_names)
        self.category_ids: List[int] = list(self.coco.category_ids)
        self.images = self.coco.images_by_key
        self.errors: List[str] = list(self.coco.errors)
        self.include_crowd = include_crowd

    def image_id(self, record: ImageRecord) -> int:
        img = self.images.get(record.key)
        if img is None:
            raise KeyError(f"{record.file_name}: not an image of {self.path} (no image entry named {record.key})")
        return int(img["id"])

    def detect(self, records: Sequence[ImageRecord]) -> List[ImageDetections]:
        out = []
        index = self.coco.category_index
        for r in records:
            a = self.coco.annotations(self.image_id(r), include_crowd=self.include_crowd)
            classes = np.array([index[c] for c in a.category_ids], dtype=np.int64)
            out.append(ImageDetections(a.boxes, classes, np.ones(len(a), dtype=np.float32)))
        return out
