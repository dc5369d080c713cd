"""``detections:FILE.json``: any detector's COCO results as the first stage, so its output can be refined.

Entries are COCO results (``image_id``, ``category_id``, ``bbox`` [x, y, w, h], ``score``). Images are
matched by an entry's ``file_name`` (base name) when present, else by ``image_id`` through an
annotations file. Class names come from the annotations' categories, else from the entries'
``category_name`` (what ``tools/infer.py`` writes). Ids and categories follow ``coco_io``'s rules.

Malformed entries are skipped, each named in ``errors`` (file, entry index, problem) and every good one is
used; the runner reports them once and fails the run. Malformed: missing keys, wrong types, unknown
categories or image ids, non-finite or negative boxes, zero-area boxes (at load), and boxes wholly outside
their image (at ``detect``, when the image's size is known). This module logs nothing itself.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence, Set, Tuple, Union

import numpy as np

from ..coco_io import CocoFile, check_bbox, check_categories, coco_id, load_coco, need, read_json, xywh_to_xyxy
from .base import FirstStage, ImageDetections, ImageRecord


@dataclass
class _ImageEntries:
    """The good entries of one image (by input base name), as arrays."""

    xywh: np.ndarray  # float64 [N, 4], the file's boxes
    boxes: np.ndarray  # float64 [N, 4] XYXY
    classes: np.ndarray  # int64 [N]
    scores: np.ndarray  # float32 [N]
    entries: np.ndarray  # int64 [N]: index of each entry in the file


class DetectionsFile(FirstStage):
    name = "detections"

    def __init__(self, path: Union[str, "os.PathLike[str]"], *,
                 annotations: Union[None, str, "os.PathLike[str]", CocoFile] = None, score_thresh: float = 0.0):
        self.path = os.fspath(path)
        entries = read_json(self.path, "detections")
        if isinstance(entries, dict) and "annotations" in entries:
            raise ValueError(f"detections {self.path}: this is an annotations file; use gt:{self.path} for "
                             "ground-truth boxes")
        if not isinstance(entries, list):
            raise ValueError(f"detections {self.path}: expected a COCO results list, got {type(entries).__name__}")
        ann = annotations if isinstance(annotations, CocoFile) or annotations is None else load_coco(annotations)
        if ann is not None:
            self.class_names, cat_ids = list(ann.class_names), list(ann.category_ids)
            self._id_to_key = {int(img["id"]): k for k, img in ann.images_by_key.items()}
        else:
            self.class_names, cat_ids = self._categories_from_entries(entries)
            self._id_to_key = {}
        self._annotations_name = ann.path if ann is not None else None
        self._cat_index = {c: i for i, c in enumerate(cat_ids)}
        self.image_ids: Dict[str, int] = {}  # image ids the file uses, so refined results keep them
        self.errors: List[str] = []
        self.errors_by_key: Dict[str, List[str]] = {}  # the errors found at detect time, by image (for parts)
        self._reported: Set[int] = set()
        rows: Dict[str, list] = {}
        for i, e in enumerate(entries):
            try:
                key, row = self._entry(i, e)
            except ValueError as err:
                self.errors.append(str(err))
                continue
            if row[2] >= score_thresh:
                rows.setdefault(key, []).append(row)
        self.by_key = {k: self._arrays(v) for k, v in rows.items()}

    def _categories_from_entries(self, entries: list) -> Tuple[List[str], List[int]]:
        named: Dict[int, Any] = {}
        for i, e in enumerate(entries):
            if not isinstance(e, dict) or "category_id" not in e:
                continue  # named as a bad entry later
            if "category_name" not in e:
                raise ValueError(
                    f"detections {self.path}: entry {i} has a category_id but no category_name; pass the annotations "
                    "JSON that defines the categories (tools/infer.py: --categories or --eval)")
            try:
                cid = coco_id(e["category_id"], "category_id", "")
            except ValueError:
                continue  # named as a bad entry later
            if named.setdefault(cid, e["category_name"]) != e["category_name"]:
                raise ValueError(f"detections {self.path}: category_id {cid} has two names "
                                 f"({named[cid]!r}, {e['category_name']!r})")
        return check_categories(sorted(named.items()), f"detections {self.path}")

    def _entry(self, i: int, e: Any) -> Tuple[str, tuple]:
        """(image key, (xywh, class, score, entry index)) of one good entry, else a ValueError naming it."""
        where = f"detections {self.path}: entry {i}"
        need(e, "bbox", where)
        cid = coco_id(need(e, "category_id", where), "category_id", where)
        iid = coco_id(e["image_id"], "image_id", where) if "image_id" in e else None
        if "file_name" in e:
            if not isinstance(e["file_name"], str):
                raise ValueError(f"{where}: file_name must be a string, got {e['file_name']!r}"[:300])
            key = os.path.basename(e["file_name"])
        elif iid in self._id_to_key:
            key = self._id_to_key[iid]
        else:
            raise ValueError(f"{where}: no file_name, and image_id {iid!r} is not in "
                             f"{self._annotations_name or 'an annotations file (pass one to match image ids)'}")
        if cid not in self._cat_index:
            raise ValueError(f"{where}: category_id {cid} is not a known category")
        score = e.get("score", 1.0)
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ValueError(f"{where}: score must be a finite number, got {score!r}"[:300])
        bbox = check_bbox(e["bbox"], where)
        if bbox[2] == 0 or bbox[3] == 0:
            raise ValueError(f"{where}: bbox {e['bbox']!r} has zero area")
        if iid is not None:
            self.image_ids.setdefault(key, iid)
        return key, (bbox, self._cat_index[cid], float(score), i)

    @staticmethod
    def _arrays(rows: list) -> _ImageEntries:
        xywh = np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, 4)
        return _ImageEntries(xywh, xywh_to_xyxy(xywh), np.array([r[1] for r in rows], dtype=np.int64),
                             np.array([r[2] for r in rows], dtype=np.float32),
                             np.array([r[3] for r in rows], dtype=np.int64))

    def _off_image(self, r: ImageRecord, d: _ImageEntries) -> np.ndarray:
        """Mask of the boxes wholly outside ``r``'s image; each is named in ``errors`` (once per entry)."""
        h, w = r.image.shape[:2]
        b = d.boxes
        off = (b[:, 2] <= 0) | (b[:, 3] <= 0) | (b[:, 0] >= w) | (b[:, 1] >= h)
        for k in np.flatnonzero(off):
            entry = int(d.entries[k])
            if entry in self._reported:
                continue
            self._reported.add(entry)
            msg = (f"detections {self.path}: entry {entry}: bbox {[round(v, 2) for v in d.xywh[k].tolist()]} lies "
                   f"wholly outside its image {r.file_name} ({w}x{h})")
            self.errors.append(msg)
            self.errors_by_key.setdefault(r.key, []).append(msg)
        return off

    def detect(self, records: Sequence[ImageRecord]) -> List[ImageDetections]:
        out = []
        for r in records:
            d = self.by_key.get(r.key)
            if d is None:
                out.append(ImageDetections.empty())
                continue
            keep = ~self._off_image(r, d)
            out.append(ImageDetections(d.boxes[keep], d.classes[keep], d.scores[keep]))
        return out
