"""``detections:FILE.json``: any detector's COCO results as the first stage, so its output can be refined.

Entries are COCO results (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``). Images are
matched by an entry's ``file_name`` (base name) when present, else by ``image_id`` through an
annotations file. Class names come from the annotations' categories, else from the entries'
``category_name`` (what ``tools/infer.py`` writes).
"""
from __future__ import annotations

import math
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from .base import FirstStage, ImageDetections, ImageRecord
from .coco_files import categories, images_by_key, int_field, load_annotations, log_entry_errors, read_json, xywh_to_xyxy


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
                if not isinstance(e, dict):
                    continue  # named as a bad entry below
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
        # Malformed entries are skipped, each named in ``errors`` (the runner reports them and fails);
        # every good one is used. An entry for an image that is not an input is simply unused.
        self.errors: List[str] = []
        for i, e in enumerate(entries):
            where = f"detections {path}: entry {i}"
            try:
                if not isinstance(e, dict):
                    raise ValueError(f"{where}: expected a JSON object, got {type(e).__name__} {str(e)[:60]!r}")
                for k in ("bbox", "category_id"):
                    if k not in e:
                        raise ValueError(f"{where}: missing key {k!r}")
                cid = int_field(e, "category_id", where)
                if "file_name" in e:
                    if not isinstance(e["file_name"], str):
                        raise ValueError(f"{where}: file_name must be a string, got {e['file_name']!r}"[:300])
                    key = os.path.basename(e["file_name"])
                else:
                    iid = int_field(e, "image_id", where) if "image_id" in e else None
                    if iid not in id_to_key:
                        raise ValueError(f"{where}: no file_name, and image_id {iid!r} is not in "
                                         f"{annotations or 'an annotations file (pass one to match image ids)'}")
                    key = id_to_key[iid]
                if cid not in cat_index:
                    raise ValueError(f"{where}: category_id {cid} is not a known category")
                score = e.get("score", 1.0)
                if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
                    raise ValueError(f"{where}: score must be a finite number, got {score!r}"[:300])
                box = xywh_to_xyxy(e["bbox"], where)
                if "image_id" in e:
                    self.image_ids.setdefault(key, int_field(e, "image_id", where))
            except ValueError as err:
                self.errors.append(str(err))
                continue
            if float(score) < score_thresh:
                continue
            self.by_key.setdefault(key, []).append((box, cat_index[cid], float(score)))
        log_entry_errors(path, self.errors)

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
