"""Deprecated: the old COCO helpers, kept only until ``inference/runner.py`` calls ``crop_classifier.coco_io``
directly. Each reads through ``coco_io.load_coco`` (its rules, one parse per file); nothing here parses.
"""
from __future__ import annotations

from typing import Any, Dict, List, Tuple

from ..coco_io import check_bbox, load_coco, read_json, xywh_to_xyxy as _xywh_to_xyxy

__all__ = ["read_json", "load_annotations", "categories", "images_by_key", "xywh_to_xyxy"]


def load_annotations(path: str) -> Dict[str, Any]:
    """The file's valid entries as a COCO dict (``load_coco(path).coco.dataset``)."""
    return load_coco(path).coco.dataset


def categories(data: Dict[str, Any], path: str) -> Tuple[List[str], List[int]]:
    """(names, ids) by ascending id: ``load_coco(path).class_names, .category_ids`` (``data`` is not read)."""
    f = load_coco(path)
    return list(f.class_names), list(f.category_ids)


def images_by_key(data: Dict[str, Any], path: str) -> Dict[str, Dict[str, Any]]:
    """``load_coco(path).images_by_key`` (``data`` is not read)."""
    return load_coco(path).images_by_key


def xywh_to_xyxy(bbox, where: str) -> List[float]:
    return _xywh_to_xyxy(check_bbox(bbox, where))[0].tolist()
