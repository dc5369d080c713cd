"""Reading COCO files: one parser (pycocotools underneath), one rule for ids and categories, each file parsed
once per process. Every COCO reader of the package goes through here: training samples (``data.coco``), the
``gt:`` and ``detections:`` first stages, ``--categories``/``--eval`` of the inference runner, the trade-off
benchmark and the Detectron2 dataset registration.

The rules:

* **Ids** (of images, categories and annotations, and the ids entries refer to) are integers: a JSON integer,
  or a number with an integral value (``3.0``, as some exporters write it), read as that ``int``. Strings are
  not ids, numeric ones (``"3"``) included: pycocotools' ``COCOeval`` and Detectron2 match ids by equality
  with the integer ids of results, so a string id would silently match nothing. An entry with one is malformed.
* **Categories** define the class space: each needs an id and a non-empty string name, both unique. The class
  order is ascending id (Detectron2's ``load_coco_json`` order). A problem there is an error for the whole file.
* **Images** need an id and a non-empty string ``file_name``; ``width``/``height``, when given, are numbers
  >= 0. Input files are matched to images by the base name of ``file_name`` (``images_by_key``).
* **Annotations** need ``id``, ``image_id`` (of a listed image), ``category_id`` (of a listed category) and
  ``bbox`` ``[x, y, w, h]`` of finite numbers with ``w, h >= 0``. Zero-area and crowd boxes are valid
  entries: each consumer decides (training drops them). ``annotations`` may be absent (image-info files).
* A malformed image or annotation entry is skipped and named in ``CocoFile.errors`` (file, entry, problem);
  the rest is used. The file itself (unreadable, not JSON, not an object, a key missing or not a list, bad
  categories) is one ``ValueError`` (``FileNotFoundError`` when missing) naming it.

``load_coco(path)`` returns the parsed file, memoised on (real path, inode, mtime, size): every reader of a
run shares one parse. Treat a ``CocoFile`` as read-only.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torchvision.ops import box_convert

PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["AnnotationBoxes", "CocoFile", "check_bbox", "check_categories", "clear_cache", "coco_bbox", "coco_id", "load_coco",
           "need", "read_json", "split_held_out", "summarize_errors", "xywh_to_xyxy"]


# ----------------------------------------------------------------------------------------- field rules


def read_json(path: PathLike, what: str = "") -> Any:
    """The parsed JSON of ``path``; errors name the file (``what``, e.g. "detections", prefixes it)."""
    name = f"{what} {os.fspath(path)}" if what else os.fspath(path)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{name}: is a folder, not a JSON file") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"{name}: not valid JSON ({e})") from None


def need(entry: Any, key: str, where: str) -> Any:
    """``entry[key]``, or a ValueError naming the entry: not an object, or the key missing."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__} {str(entry)[:60]!r}")
    if key not in entry:
        raise ValueError(f"{where}: missing key {key!r}")
    return entry[key]


def coco_id(value: Any, key: str, where: str) -> int:
    """An id by the module's rule: an integer, or a number with an integral value; never a string."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not (math.isfinite(value) and value.is_integer()))):
        raise ValueError(f"{where}: {key} must be an integer, got {type(value).__name__} {str(value)[:40]!r}")
    return int(value)


def check_bbox(bbox: Any, where: str) -> List[float]:
    """A COCO ``[x, y, w, h]``: 4 finite numbers, ``w, h >= 0``; returned as floats."""
    if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in bbox)):
        raise ValueError(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}"[:300])
    if bbox[2] < 0 or bbox[3] < 0:
        raise ValueError(f"{where}: bbox has a negative width or height: {bbox!r}")
    return [float(v) for v in bbox]


def xywh_to_xyxy(boxes: Any) -> np.ndarray:
    """``[N, 4]`` XYWH -> XYXY float64 (torchvision's conversion; float64 keeps ``x + w`` exact as Python does)."""
    arr = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return box_convert(torch.from_numpy(arr), "xywh", "xyxy").numpy()


def check_categories(pairs: Sequence[Tuple[int, Any]], where: str) -> Tuple[List[str], List[int]]:
    """The category rule: (names, ids) sorted by id; ids and names unique, names non-empty strings."""
    names: Dict[int, str] = {}
    for cid, name in pairs:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: category id {cid}: name must be a non-empty string, got {name!r}"[:300])
        if cid in names:
            raise ValueError(f"{where}: category id {cid} appears twice")
        if name in names.values():
            raise ValueError(f"{where}: category name {name!r} appears twice")
        names[cid] = name
    ids = sorted(names)
    return [names[c] for c in ids], ids


def summarize_errors(path: PathLike, errors: Sequence[str], limit: int = 5) -> str:
    """One line: how many malformed entries of ``path`` were skipped, and the first few."""
    n = len(errors)
    return (f"{os.fspath(path)}: skipped {n} malformed entr{'y' if n == 1 else 'ies'}: "
            + "; ".join(errors[:limit]) + (" ..." if n > limit else ""))


def _size(value: Any, key: str, where: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                              or not math.isfinite(value) or value < 0):
        raise ValueError(f"{where}: {key} must be a non-negative number, got {value!r}"[:300])


# ----------------------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class AnnotationBoxes:
    """One image's annotations, in file order."""

    boxes: np.ndarray  # float64 [N, 4] XYXY, as the file gives them (not clipped)
    xywh: np.ndarray  # float64 [N, 4] the file's own [x, y, w, h]
    category_ids: np.ndarray  # int64 [N]
    ids: np.ndarray  # int64 [N] annotation ids
    iscrowd: np.ndarray  # bool [N]

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, keep: np.ndarray) -> "AnnotationBoxes":
        return AnnotationBoxes(self.boxes[keep], self.xywh[keep], self.category_ids[keep], self.ids[keep],
                               self.iscrowd[keep])


class CocoFile:
    """One parsed COCO instances file (see the module docstring for the rules).

    ``coco``: a pycocotools ``COCO`` over the valid entries only (ids as ints, ``iscrowd``/``area`` filled in
    where missing), ready for ``COCOeval``. ``class_names``/``category_ids``: the categories by ascending id.
    ``images``: valid image entries in file order. ``errors``: the malformed entries skipped, each named.
    """

    def __init__(self, path: PathLike, data: Any):
        self.path = os.fspath(path)
        self.errors: List[str] = []
        self.num_bad_annotations = 0
        if not isinstance(data, dict):
            raise ValueError(f"{self.path}: expected a JSON object (a COCO instances file), got {type(data).__name__}")
        self.has_annotations = "annotations" in data
        lists = {k: data.get(k, []) if k == "annotations" else need(data, k, self.path)
                 for k in ("categories", "images", "annotations")}
        for k, v in lists.items():
            if not isinstance(v, list):
                raise ValueError(f"{self.path}: {k!r} must be a list, got {type(v).__name__}")
        cats = self._categories(lists["categories"])
        images = self._images(lists["images"])
        anns = self._annotations(lists["annotations"], {im["id"] for im in images})
        self.coco = _index({**{k: v for k, v in data.items() if k not in lists},
                            "categories": cats, "images": images, "annotations": anns})
        self._image_by_id = {im["id"]: im for im in images}
        rows: Dict[int, List[int]] = {}
        for r, a in enumerate(anns):
            rows.setdefault(a["image_id"], []).append(r)
        self._rows = {iid: np.array(r, dtype=np.int64) for iid, r in rows.items()}
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        self._all = AnnotationBoxes(
            xywh_to_xyxy(xywh), xywh, np.array([a["category_id"] for a in anns], dtype=np.int64),
            np.array([a["id"] for a in anns], dtype=np.int64), np.array([bool(a["iscrowd"]) for a in anns], dtype=bool))

    # -- parsing (one entry kind each)

    def _categories(self, cats: list) -> List[dict]:
        pairs, out = [], []
        for i, c in enumerate(cats):
            where = f"{self.path}: categories[{i}]"
            cid = coco_id(need(c, "id", where), "id", where)
            pairs.append((cid, need(c, "name", where)))
            out.append({**c, "id": cid})
        self.class_names, self.category_ids = check_categories(pairs, self.path)
        return out

    def _images(self, images: list) -> List[dict]:
        out, seen = [], set()
        for i, im in enumerate(images):
            where = f"{self.path}: images[{i}]"
            try:
                iid, fname = coco_id(need(im, "id", where), "id", where), need(im, "file_name", where)
                if not isinstance(fname, str) or not fname:
                    raise ValueError(f"{where}: file_name must be a non-empty string, got {fname!r}"[:300])
                if iid in seen:
                    raise ValueError(f"{where}: image id {iid} appears twice")
                _size(im.get("width"), "width", where)
                _size(im.get("height"), "height", where)
            except ValueError as e:
                self.errors.append(str(e))
                continue
            seen.add(iid)
            out.append({**im, "id": iid})
        return out

    def _annotations(self, anns: list, image_ids: set) -> List[dict]:
        out, seen, cat_ids = [], set(), set(self.category_ids)
        for i, a in enumerate(anns):
            try:
                out.append(self._annotation(i, a, image_ids, cat_ids, seen))
            except ValueError as e:
                self.errors.append(str(e))
                self.num_bad_annotations += 1
        return out

    def _annotation(self, i: int, a: Any, image_ids: set, cat_ids: set, seen: set) -> dict:
        where = f"{self.path}: annotations[{i}]"
        aid = coco_id(need(a, "id", where), "id", where)
        where = f"{self.path}: annotation id {aid}"
        raw = {k: need(a, k, where) for k in ("image_id", "category_id", "bbox")}
        iid, cid = coco_id(raw["image_id"], "image_id", where), coco_id(raw["category_id"], "category_id", where)
        if iid not in image_ids:
            raise ValueError(f"{where}: image_id {iid} is not in 'images'")
        if cid not in cat_ids:
            raise ValueError(f"{where}: category_id {cid} is not in 'categories'")
        bbox = check_bbox(raw["bbox"], where)
        if aid in seen:
            raise ValueError(f"{self.path}: annotations[{i}]: annotation id {aid} appears twice")
        seen.add(aid)
        # COCOeval reads iscrowd and area of every ground-truth box: filled in where a file leaves them out.
        return {**a, "id": aid, "image_id": iid, "category_id": cid, "bbox": bbox,
                "iscrowd": int(bool(a.get("iscrowd", 0))), "area": a.get("area", bbox[2] * bbox[3])}

    # -- lookups

    @property
    def categories(self) -> List[dict]:
        """``[{"id", "name"}]`` by ascending id."""
        return [{"id": i, "name": n} for i, n in zip(self.category_ids, self.class_names)]

    @cached_property
    def category_index(self) -> Dict[int, int]:
        """Category id -> position in ``class_names``."""
        return {cid: k for k, cid in enumerate(self.category_ids)}

    @property
    def images(self) -> List[dict]:
        return self.coco.dataset["images"]

    def image(self, image_id: int) -> Optional[dict]:
        return self._image_by_id.get(image_id)

    @cached_property
    def images_by_key(self) -> Dict[str, dict]:
        """Image entries by ``file_name`` base name (how input files are matched); two images with the same base
        name make matching ambiguous: a ValueError naming both."""
        out: Dict[str, dict] = {}
        for im in self.images:
            key = os.path.basename(im["file_name"])
            if key in out:
                raise ValueError(f"{self.path}: two images named {key} (ids {out[key]['id']} and {im['id']}): "
                                 "input files are matched by base name")
            out[key] = im
        return out

    def annotations(self, image_id: int, *, include_crowd: bool = True) -> AnnotationBoxes:
        """The image's valid annotations as XYXY boxes, in file order."""
        rows = self._rows.get(image_id, np.zeros(0, dtype=np.int64))
        out = self._all.select(rows)
        return out if include_crowd else out.select(~out.iscrowd)


def _index(dataset: dict):
    from pycocotools.coco import COCO

    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco.createIndex()
    return coco


# ----------------------------------------------------------------------------------------- parse once

_CACHE: "OrderedDict[tuple, CocoFile]" = OrderedDict()
_CACHE_SIZE = 4  # a run reads one or two files (train/val, --eval); big ones are not kept beyond that
_LOCK = threading.Lock()


def load_coco(path: PathLike) -> CocoFile:
    """The parsed file, parsed once per process while it is unchanged (real path, inode, mtime, size)."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    key = (os.path.realpath(path), st.st_ino, st.st_mtime_ns, st.st_size)
    with _LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    parsed = CocoFile(path, read_json(path))
    with _LOCK:
        _CACHE[key] = parsed
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return parsed


def clear_cache() -> None:
    with _LOCK:
        _CACHE.clear()


def split_held_out(dataset: dict, every: int) -> Tuple[dict, dict]:
    """(train, test) COCO dicts of whole images: among the images with a non-crowd box of at least 1 x 1 px,
    sorted by id, every ``every``-th is held out (the resolution trade-off's split); the others, and images
    without such a box, are training images. Everything but ``images`` and ``annotations`` is copied."""
    boxed = {int(a["image_id"]) for a in need(dataset, "annotations", "COCO file")
             if not a.get("iscrowd", 0) and len(a.get("bbox", ())) == 4 and min(a["bbox"][2:]) >= 1}
    with_box = sorted(int(im["id"]) for im in need(dataset, "images", "COCO file") if int(im["id"]) in boxed)
    test_ids = {i for k, i in enumerate(with_box) if k % every == every - 1}

    def part(held: bool) -> dict:
        out = {k: v for k, v in dataset.items() if k not in ("images", "annotations")}
        out["images"] = [im for im in dataset["images"] if (int(im["id"]) in test_ids) == held]
        out["annotations"] = [a for a in dataset["annotations"] if (int(a["image_id"]) in test_ids) == held]
        return out

    return part(False), part(True)


def coco_bbox(xyxy: Sequence[float]) -> List[float]:
    """One XYXY box as a COCO results ``bbox`` ``[x, y, w, h]``, rounded to 0.01 px."""
    xywh = box_convert(torch.tensor([[float(v) for v in xyxy]], dtype=torch.float64), "xyxy", "xywh")[0]
    return [round(float(v), 2) for v in xywh]
