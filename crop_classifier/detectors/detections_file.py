"""``detections:FILE.json``: any detector's COCO results as the first stage, so its output can be refined.

Entries are COCO results (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``). Images are
matched by an entry's ``file_name`` (base name) when present, else by ``image_id`` through an
annotations file. Class names come from the annotations' categories, else from the entries'
``category_name`` (what ``tools/infer.py`` writes).
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from .base import FirstStage, ImageDetections, ImageRecord
from .coco_files import categories, images_by_key, load_annotations, read_json, xywh_to_xyxy


class DetectionsFile(FirstStage):
    name = "detections"

    def __init__(self, path: str, *, annotations: Optional[str] = None, score_thresh: float = 0.0):
        self.path = path
        entries = read_json(path, "detections")
        if isinstance(entries, dict) and "annotations" in entries:
            raise ValueError(f"detections {path}: this is an annotations file; use gt:{path} for ground-truth boxes")
        if not isinstance(entries, list):
            raise ValueError(f"detections {path}: expected a COCO results list, got {type(entries).__name__}")
        ann = load_annotations(annotations) if annotations else None
        if ann is not None:
            self.class_names, cat_ids = categories(ann, annotations)
        else:
            named = {}
            for i, e in enumerate(entries):
                if "category_name" not in e:
                    raise ValueError(
                        f"detections {path}: entry {i} has a category_id but no category_name; pass the annotations "
                        "JSON that defines the categories (tools/infer.py: --categories or --eval)"
                    )
                if named.setdefault(e["category_id"], e["category_name"]) != e["category_name"]:
                    raise ValueError(f"detections {path}: category_id {e['category_id']} has two names")
            cat_ids = sorted(named)
            self.class_names = [str(named[c]) for c in cat_ids]
        cat_index = {int(c): i for i, c in enumerate(cat_ids)}
        id_to_key = {int(img["id"]): k for k, img in images_by_key(ann, annotations).items()} if ann else {}
        self.by_key: Dict[str, list] = {}
        self.image_ids: Dict[str, int] = {}  # image ids the file uses, so refined results keep them
        for i, e in enumerate(entries):
            where = f"detections {path}: entry {i}"
            if not isinstance(e, dict) or "bbox" not in e or "category_id" not in e:
                raise ValueError(f"{where}: needs bbox and category_id, got {e!r}"[:300])
            if "file_name" in e:
                key = os.path.basename(e["file_name"])
            elif e.get("image_id") in id_to_key:
                key = id_to_key[e["image_id"]]
            else:
                raise ValueError(f"{where}: no file_name, and image_id {e.get('image_id')!r} is not in "
                                 f"{annotations or 'an annotations file (pass one to match image ids)'}")
            if int(e["category_id"]) not in cat_index:
                raise ValueError(f"{where}: category_id {e['category_id']} is not a known category")
            if "image_id" in e:
                self.image_ids.setdefault(key, int(e["image_id"]))
            score = float(e.get("score", 1.0))
            if score < score_thresh:
                continue
            self.by_key.setdefault(key, []).append((xywh_to_xyxy(e["bbox"], where), cat_index[int(e["category_id"])], score))

    def detect(self, records: Sequence[ImageRecord]) -> List[ImageDetections]:
        out = []
        for r in records:
            dets = self.by_key.get(r.key, [])
            out.append(ImageDetections(
                np.array([d[0] for d in dets], dtype=np.float32).reshape(-1, 4),
                np.array([d[1] for d in dets], dtype=np.int64),
                np.array([d[2] for d in dets], dtype=np.float32),
            ))
        return out
