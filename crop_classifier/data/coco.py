"""COCO-format detection data -> crop samples, and the map-style dataset that crops them.

One sample is one ground-truth box: ``(image_path, box_xyxy float32[4], label, ann_id)``. The
dataset decodes each distinct image of a batch once (``__getitems__``), crops all of its boxes
with ``crop_classifier.crops`` (the same crop step inference uses), augments the uint8 crops
when training and normalises with the ImageNet mean/std.
"""
from __future__ import annotations

import json
import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..crops import CROP_MODES, DEFAULT_CONTEXT, extract_crops, extract_crops_hwc
from .images import read_rgb  # the one robust reader (EXIF, 16-bit, CMYK, truncation, pixel limit)
from .transforms import normalize

__all__ = ["CocoSamples", "CropDataset", "Sample", "collate_identity", "jitter_boxes", "load_coco_samples",
           "box_iou", "read_rgb"]

logger = logging.getLogger(__name__)

#: ``(image_path, box_xyxy float32[4], label, ann_id)``
Sample = Tuple[str, np.ndarray, int, int]


@dataclass
class CocoSamples:
    """Crop samples of one COCO file, grouped by image (an image's boxes are consecutive)."""

    class_names: List[str]
    samples: List[Sample]
    image_index: np.ndarray  # int64 [len(samples)]: index into image_paths
    image_paths: List[str]
    ann_file: str = ""
    skipped: Dict[str, int] = field(default_factory=dict)  # reason -> number of annotations
    errors: List[str] = field(default_factory=list)  # malformed entries skipped (strict=False), each named

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Sample:
        return self.samples[i]

    @property
    def labels(self) -> np.ndarray:
        return np.array([s[2] for s in self.samples], dtype=np.int64)


def _need(obj, key: str, where: str):
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__} {str(obj)[:60]!r}")
    if key not in obj:
        raise ValueError(f"{where}: missing key {key!r}")
    return obj[key]


def _id(value, key: str, where: str):
    # COCO ids are integers (strings tolerated); a list or a float would not even be hashable/matchable.
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{where}: {key} must be an integer, got {type(value).__name__} {str(value)[:40]!r}")
    return value


def _size(value, key: str, where: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{where}: {key} must be a non-negative number, got {value!r}")
    return float(value)


def load_coco_samples(ann_file: Union[str, os.PathLike], image_dir: Union[str, os.PathLike], *,
                      class_names: Optional[Sequence[str]] = None, min_size: float = 0,
                      skip_crowd: bool = True, strict: bool = True) -> CocoSamples:
    """Ground-truth boxes of a COCO instances file as crop samples.

    ``class_names``: the classes to keep and their label order, by category *name* (default: all
    categories in id order); a name the file lacks is an error listing the valid names.
    ``min_size``: boxes whose shorter side is below it (pixels) are dropped; so are zero-area
    boxes and, with ``skip_crowd``, ``iscrowd`` regions. Boxes are clipped to the image when the
    file gives its size. Malformed image/annotation entries (missing keys, wrong types, unknown image
    or category ids, bad boxes) raise ``ValueError`` naming the file and the entry; with
    ``strict=False`` each is instead recorded in ``CocoSamples.errors`` (and logged) and the rest is
    loaded. A broken file or category list is always an error: it defines the class space.
    """
    ann_file = str(ann_file)
    try:
        with open(ann_file) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{ann_file}: annotation file not found") from None
    except ValueError as e:
        raise ValueError(f"{ann_file}: not valid JSON ({e})") from None
    where = ann_file
    cats, images, anns = (_need(data, k, where) for k in ("categories", "images", "annotations"))
    for k, v in (("categories", cats), ("images", images), ("annotations", anns)):
        if not isinstance(v, list):
            raise ValueError(f"{where}: {k!r} must be a list, got {type(v).__name__}")

    name_of: Dict[int, str] = {}
    for i, c in enumerate(cats):
        cid, name = _need(c, "id", f"{where}: categories[{i}]"), _need(c, "name", f"{where}: categories[{i}]")
        cid = _id(cid, "id", f"{where}: categories[{i}]")
        if cid in name_of:
            raise ValueError(f"{where}: category id {cid} appears twice")
        if name in name_of.values():
            raise ValueError(f"{where}: category name {name!r} appears twice")
        name_of[cid] = str(name)
    all_names = [name_of[k] for k in sorted(name_of, key=lambda k: (isinstance(k, str), k))]
    if class_names is None:
        class_names = all_names
    else:
        class_names = [str(n) for n in class_names]
        unknown = [n for n in class_names if n not in all_names]
        if unknown:
            raise ValueError(f"{where}: unknown class names {unknown}; valid names: {all_names}")
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names has duplicates: {class_names}")
    label_of_name = {n: i for i, n in enumerate(class_names)}
    label_of_cat = {cid: label_of_name.get(n) for cid, n in name_of.items()}

    errors: List[str] = []

    def bad(msg: str) -> None:
        if strict:
            raise ValueError(msg)
        errors.append(msg)

    image_of: Dict[int, Tuple[str, Optional[float], Optional[float]]] = {}
    order: List[int] = []
    for i, im in enumerate(images):
        w = f"{where}: images[{i}]"
        try:
            iid, fname = _id(_need(im, "id", w), "id", w), _need(im, "file_name", w)
            if not isinstance(fname, str) or not fname:
                raise ValueError(f"{w}: file_name must be a non-empty string, got {fname!r}")
            if iid in image_of:
                raise ValueError(f"{where}: image id {iid} appears twice")
            size = _size(im.get("width"), "width", w), _size(im.get("height"), "height", w)
        except ValueError as e:
            bad(str(e))
            continue
        image_of[iid] = (os.path.join(str(image_dir), fname), *size)
        order.append(iid)

    skipped = {"crowd": 0, "other_class": 0, "empty": 0, "small": 0, "invalid": 0}
    per_image: Dict[int, List[Tuple[np.ndarray, int, int]]] = {}
    for i, a in enumerate(anns):
        try:
            aid = _id(_need(a, "id", f"{where}: annotations[{i}]"), "id", f"{where}: annotations[{i}]")
            w = f"{where}: annotation id {aid}"
            iid, cid, bbox = _need(a, "image_id", w), _need(a, "category_id", w), _need(a, "bbox", w)
            iid, cid = _id(iid, "image_id", w), _id(cid, "category_id", w)
            if iid not in image_of:
                raise ValueError(f"{w}: image_id {iid} is not in 'images'")
            if cid not in name_of:
                raise ValueError(f"{w}: category_id {cid} is not in 'categories'")
            if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                               for v in bbox)):
                raise ValueError(f"{w}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
            if bbox[2] < 0 or bbox[3] < 0:
                raise ValueError(f"{w}: bbox has a negative width or height: {bbox!r}")
        except ValueError as e:
            bad(str(e))
            skipped["invalid"] += 1
            continue
        if skip_crowd and a.get("iscrowd", 0):
            skipped["crowd"] += 1
            continue
        label = label_of_cat[cid]
        if label is None:
            skipped["other_class"] += 1
            continue
        x, y, bw, bh = (float(v) for v in bbox)
        x1, y1, x2, y2 = x, y, x + bw, y + bh
        _, W, H = image_of[iid]
        if W and H:
            x1, x2 = min(max(x1, 0.0), float(W)), min(max(x2, 0.0), float(W))
            y1, y2 = min(max(y1, 0.0), float(H)), min(max(y2, 0.0), float(H))
        if x2 - x1 <= 0 or y2 - y1 <= 0:
            skipped["empty"] += 1
            continue
        if min(x2 - x1, y2 - y1) < min_size:
            skipped["small"] += 1
            continue
        per_image.setdefault(iid, []).append((np.array([x1, y1, x2, y2], np.float32), label, int(aid) if isinstance(aid, int) else i))
    if errors:
        logger.warning("%s: skipped %d malformed entr%s: %s%s", ann_file, len(errors), "y" if len(errors) == 1 else "ies",
                       "; ".join(errors[:5]), " ..." if len(errors) > 5 else "")

    samples: List[Sample] = []
    index: List[int] = []
    paths: List[str] = []
    for iid in order:
        if iid not in per_image:
            continue
        path = image_of[iid][0]
        for box, label, aid in per_image[iid]:
            samples.append((path, box, label, aid))
            index.append(len(paths))
        paths.append(path)
    return CocoSamples(list(class_names), samples, np.array(index, dtype=np.int64), paths, ann_file, skipped, errors)


# ----------------------------------------------------------------------------------------- boxes


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise IoU of two ``[N, 4]`` XYXY arrays."""
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def jitter_boxes(boxes: np.ndarray, min_iou: float, rng: np.random.Generator, *, tries: int = 16) -> np.ndarray:
    """Boxes that look like a detector's: each randomly shifted and rescaled with IoU >= ``min_iou``.

    Per box, candidates shift the centre by up to ``a`` of the side and scale each side by up to
    ``exp(±b)``, with ``a``, ``b`` the largest a single change could take at that IoU; the first
    candidate that meets ``min_iou`` is used (the box itself when none does).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if not 0 < min_iou < 1:
        raise ValueError(f"min_iou must be in (0, 1), got {min_iou}")
    n = len(boxes)
    if n == 0:
        return boxes.astype(np.float32)
    a = (1 - min_iou) / (1 + min_iou)  # centre shift (fraction of the side) alone giving min_iou
    b = -math.log(min_iou) / 2  # log-scale of each side alone giving min_iou
    w = (boxes[:, 2] - boxes[:, 0])[:, None]
    h = (boxes[:, 3] - boxes[:, 1])[:, None]
    cx = (boxes[:, 0] + boxes[:, 2])[:, None] / 2 + rng.uniform(-a, a, (n, tries)) * w
    cy = (boxes[:, 1] + boxes[:, 3])[:, None] / 2 + rng.uniform(-a, a, (n, tries)) * h
    nw = w * np.exp(rng.uniform(-b, b, (n, tries)))
    nh = h * np.exp(rng.uniform(-b, b, (n, tries)))
    cand = np.stack([cx - nw / 2, cy - nh / 2, cx + nw / 2, cy + nh / 2], -1)  # [n, tries, 4]
    iou = box_iou(cand.reshape(-1, 4), np.repeat(boxes, tries, 0)).reshape(n, tries)
    ok = iou >= min_iou
    first = np.argmax(ok, axis=1)
    out = np.where(ok.any(1)[:, None], cand[np.arange(n), first], boxes)
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------------- dataset


def collate_identity(batch):
    """``collate_fn`` for loaders over ``CropDataset`` with a batch sampler: ``__getitems__``
    already returns the collated ``(images, labels)``."""
    return batch


class CropDataset(torch.utils.data.Dataset):
    """Map-style dataset of crops ``(Tensor[3, S, S], label)``.

    ``__getitems__(indices)`` (used by ``DataLoader`` with a batch sampler and
    ``collate_fn=collate_identity``) returns ``(Tensor[B, 3, S, S] float, LongTensor[B])`` and
    decodes each distinct image of the batch once. With ``train=True``: boxes are jittered to
    IoU >= ``jitter_iou`` with their ground truth (when given), ``transform`` (an
    albumentations transform of uint8 HxWx3 crops, e.g. ``build_train_transform``) is applied and
    the crops are normalised (``transforms.normalize``, the training-time normalisation). With
    ``train=False``: plain crops in [0, 1], what ``models.inference.InferenceClassifier`` takes (it
    normalises them itself). Crops use the same ``extract_crops`` geometry (context, mode) as inference.
    """

    def __init__(self, samples: Union[CocoSamples, Sequence[Sample]], input_size: int, *,
                 context: float = DEFAULT_CONTEXT, mode: str = "square", train: bool = False,
                 jitter_iou: Optional[float] = None, transform: Optional[Callable] = None, seed: int = 0):
        if mode not in CROP_MODES:
            raise ValueError(f"mode must be one of {CROP_MODES}, got {mode!r}")
        if jitter_iou is not None and not 0 < jitter_iou < 1:
            raise ValueError(f"jitter_iou must be in (0, 1) or None, got {jitter_iou}")
        self.class_names = list(samples.class_names) if isinstance(samples, CocoSamples) else None
        self.samples: List[Sample] = list(samples.samples if isinstance(samples, CocoSamples) else samples)
        self.input_size = int(input_size)
        self.context = float(context)
        self.mode = mode
        self.train = bool(train)
        self.jitter_iou = jitter_iou if train else None
        self.transform = transform if train else None
        self.seed = int(seed)
        self._rng: Optional[np.random.Generator] = None
        self._rng_key = None
        self._cache: "OrderedDict[str, np.ndarray]" = OrderedDict()

    def __len__(self) -> int:
        return len(self.samples)

    def _generator(self) -> np.random.Generator:
        # DataLoader re-seeds torch in every worker and epoch; follow it so jitter differs per
        # epoch and worker yet a run seeded with torch.manual_seed repeats.
        key = (os.getpid(), torch.initial_seed())
        if key != self._rng_key:
            self._rng = np.random.default_rng([self.seed, key[1] % (1 << 63)])
            self._rng_key = key
            # albumentations >= 2 draws from a generator of its own, seeded from OS entropy when the
            # transform is built: seed it from the same stream, or augmentation (and resume) is not repeatable.
            if hasattr(self.transform, "set_random_seed"):
                self.transform.set_random_seed(int(self._rng.integers(1 << 31)))
        return self._rng

    def _image(self, path: str) -> np.ndarray:
        # The last two images stay decoded: an image cut across two consecutive batches is read once.
        img = self._cache.get(path)
        if img is None:
            img = read_rgb(path)
            self._cache[path] = img
            while len(self._cache) > 2:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(path)
        return img

    def _crops(self, img: np.ndarray, boxes: np.ndarray) -> torch.Tensor:
        S = self.input_size
        if self.transform is None:
            return extract_crops(img, boxes, S, context=self.context, mode=self.mode, backend="cv2")
        crops = extract_crops_hwc(img, boxes, S, context=self.context, mode=self.mode)
        out = np.stack([self.transform(image=c)["image"] for c in crops])
        if out.shape[1:] != (S, S, 3) or out.dtype != np.uint8:
            raise ValueError(f"transform must return uint8 {S}x{S}x3 crops, got {out.dtype} {out.shape[1:]}")
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255)

    def __getitems__(self, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        indices = [int(i) for i in indices]
        groups: "OrderedDict[str, List[int]]" = OrderedDict()
        for pos, i in enumerate(indices):
            groups.setdefault(self.samples[i][0], []).append(pos)
        rng = self._generator() if self.train else None  # also (re)seeds the transform for this epoch/worker
        out = torch.empty((len(indices), 3, self.input_size, self.input_size))
        labels = torch.empty(len(indices), dtype=torch.long)
        for path, positions in groups.items():
            img = self._image(path)
            boxes = np.stack([self.samples[indices[p]][1] for p in positions]).astype(np.float32)
            if self.jitter_iou is not None:
                boxes = jitter_boxes(boxes, self.jitter_iou, rng)
            pos_t = torch.tensor(positions)
            out[pos_t] = self._crops(img, boxes)
            labels[pos_t] = torch.tensor([self.samples[indices[p]][2] for p in positions])
        return (normalize(out) if self.train else out), labels

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        x, y = self.__getitems__([index])
        return x[0], int(y[0])
