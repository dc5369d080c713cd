"""Shared reading of COCO JSON files with errors that name the file and the entry."""
from __future__ import annotations

import json
import logging
import math
import os
from typing import Any, Dict, List, Tuple

logger = logging.getLogger(__name__)


def read_json(path: str, what: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {path}: no such file") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {path}: not valid JSON ({e})") from None


def load_annotations(path: str) -> Dict[str, Any]:
    data = read_json(path, "annotations")
    if not isinstance(data, dict) or not isinstance(data.get("images"), list) or not isinstance(data.get("categories"), list):
        raise ValueError(f"annotations {path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    data.setdefault("annotations", [])
    return data


def categories(data: Dict[str, Any], path: str) -> Tuple[List[str], List[int]]:
    """(names, ids) of a COCO file's categories, sorted by id (the detector class order used here)."""
    cats = sorted(data["categories"], key=lambda c: c["id"])
    names = [str(c["name"]) for c in cats]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{path}: category names repeat: {dup}")
    return names, [int(c["id"]) for c in cats]


def images_by_key(data: Dict[str, Any], path: str) -> Dict[str, Dict[str, Any]]:
    """Image entries by file base name (how input files are matched against annotations)."""
    out: Dict[str, Dict[str, Any]] = {}
    for img in data["images"]:
        if "file_name" not in img or "id" not in img:
            raise ValueError(f"{path}: image entry without file_name/id: {img}")
        key = os.path.basename(img["file_name"])
        if key in out:
            raise ValueError(f"{path}: two images named {key}")
        out[key] = img
    return out


def xywh_to_xyxy(bbox, where: str) -> List[float]:
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        raise ValueError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}"[:300])
    x, y, w, h = (float(v) for v in bbox)
    if w < 0 or h < 0:
        raise ValueError(f"{where}: bbox has a negative width/height: {bbox!r}")
    return [x, y, x + w, y + h]


def int_field(entry: Dict[str, Any], key: str, where: str) -> int:
    """``entry[key]`` as an int id (COCO ids are integers), or a ValueError naming the entry and key."""
    if key not in entry:
        raise ValueError(f"{where}: missing key {key!r}")
    v = entry[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or (isinstance(v, float) and not v.is_integer()):
        raise ValueError(f"{where}: {key} must be an integer, got {type(v).__name__} {str(v)[:40]!r}")
    return int(v)


def log_entry_errors(path: str, errors: List[str]) -> None:
    if errors:
        logger.warning("%s: skipped %d malformed entr%s: %s%s", path, len(errors), "y" if len(errors) == 1 else "ies",
                       "; ".join(errors[:5]), " ..." if len(errors) > 5 else "")
