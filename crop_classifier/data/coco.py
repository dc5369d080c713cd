"""COCO-format detection data -> crop samples, and the map-style dataset that crops them.

One sample is one ground-truth box: ``(image_path, box_xyxy float32[4], label, ann_id)``. The
dataset decodes each distinct image of a batch once (``__getitems__``), crops all of its boxes
with ``crop_classifier.crops`` (the same crop step inference uses), augments the uint8 crops
when training and normalises with the ImageNet mean/std.
"""
from __future__ import annotations

import logging
import math
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torchvision.ops import box_iou

from ..coco_io import load_coco, summarize_errors
from ..crops import CROP_MODES, DEFAULT_CONTEXT, extract_crops, extract_crops_hwc
from .images import read_rgb  # the one robust reader (EXIF, 16-bit, CMYK, truncation, pixel limit)
from .detection_crops import DETECTION_ANN_ID
from .negatives import is_negative, random_negative_boxes
from .transforms import normalize

__all__ = ["CocoSamples", "CropDataset", "Sample", "collate_identity", "jitter_boxes", "load_coco_samples",
           "object_boxes", "read_rgb"]

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


def load_coco_samples(ann_file: Union[str, os.PathLike], image_dir: Union[str, os.PathLike], *,
                      class_names: Optional[Sequence[str]] = None, min_size: float = 0,
                      skip_crowd: bool = True, strict: bool = True) -> CocoSamples:
    """Ground-truth boxes of a COCO instances file as crop samples (read by ``coco_io.load_coco``: its id and
    category rules, parsed once per process).

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
    coco = load_coco(ann_file)
    if not coco.has_annotations:
        raise ValueError(f"{ann_file}: missing key 'annotations'")
    if strict and coco.errors:
        raise ValueError(coco.errors[0])
    all_names = coco.class_names
    if class_names is None:
        class_names = all_names
    else:
        class_names = [str(n) for n in class_names]
        unknown = [n for n in class_names if n not in all_names]
        if unknown:
            raise ValueError(f"{ann_file}: unknown class names {unknown}; valid names: {all_names}")
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"class_names has duplicates: {class_names}")
    label_of_name = {n: i for i, n in enumerate(class_names)}
    label_of_cat = {cid: label_of_name.get(n, -1) for cid, n in zip(coco.category_ids, all_names)}

    skipped = {"crowd": 0, "other_class": 0, "empty": 0, "small": 0, "invalid": coco.num_bad_annotations}
    samples: List[Sample] = []
    index: List[int] = []
    paths: List[str] = []
    for im in coco.images:
        anns = coco.annotations(im["id"])
        if skip_crowd:
            skipped["crowd"] += int(anns.iscrowd.sum())
            anns = anns.select(~anns.iscrowd)
        labels = np.array([label_of_cat[c] for c in anns.category_ids], dtype=np.int64)
        skipped["other_class"] += int((labels < 0).sum())
        boxes, labels, ids = anns.boxes[labels >= 0], labels[labels >= 0], anns.ids[labels >= 0]
        W, H = im.get("width"), im.get("height")
        if W and H:
            boxes = np.stack([boxes[:, 0].clip(0, W), boxes[:, 1].clip(0, H),
                              boxes[:, 2].clip(0, W), boxes[:, 3].clip(0, H)], 1)
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        empty = (w <= 0) | (h <= 0)
        small = ~empty & (np.minimum(w, h) < min_size)
        skipped["empty"] += int(empty.sum())
        skipped["small"] += int(small.sum())
        keep = ~empty & ~small
        if not keep.any():
            continue
        path = os.path.join(str(image_dir), im["file_name"])
        for box, label, aid in zip(boxes[keep].astype(np.float32), labels[keep], ids[keep]):
            samples.append((path, box, int(label), int(aid)))
            index.append(len(paths))
        paths.append(path)
    if coco.errors:
        logger.warning("%s", summarize_errors(ann_file, coco.errors))
    return CocoSamples(list(class_names), samples, np.array(index, dtype=np.int64), paths, ann_file, skipped,
                       list(coco.errors))


def object_boxes(ann_file: Union[str, os.PathLike], image_dir: Union[str, os.PathLike]) -> Dict[str, np.ndarray]:
    """Every annotated box of a COCO file (any class, crowd and tiny ones too) as ``{image path: XYXY [n, 4]}``:
    what background crops must avoid, whatever the training samples keep."""
    coco = load_coco(str(ann_file))
    out: Dict[str, np.ndarray] = {}
    for im in coco.images:
        out[os.path.join(str(image_dir), im["file_name"])] = np.asarray(coco.annotations(im["id"]).boxes,
                                                                          dtype=np.float32).reshape(-1, 4)
    return out


# ----------------------------------------------------------------------------------------- boxes


def _paired_iou(cand: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of each box's candidates with it: ``cand [n, T, 4]``, ``boxes [n, 4]`` (XYXY) -> ``[n, T]``.

    torchvision's ``box_iou`` gives every pair; a block of boxes at a time bounds that to ``block^2 * T``
    and keeps each box's own row."""
    out = np.empty(cand.shape[:2])
    for s in range(0, len(boxes), 64):
        b, c = torch.from_numpy(boxes[s:s + 64]), torch.from_numpy(cand[s:s + 64])
        k = len(b)
        iou = box_iou(b, c.reshape(-1, 4)).reshape(k, k, -1)
        out[s:s + k] = iou[torch.arange(k), torch.arange(k)].numpy()
    return out


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
    ok = _paired_iou(cand, boxes) >= min_iou  # NaN (a zero-area box) is never >= min_iou
    first = np.argmax(ok, axis=1)
    out = np.where(ok.any(1)[:, None], cand[np.arange(n), first], boxes)
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------------- dataset


def _sample_boxes(samples: Sequence[Sample]) -> Dict[str, np.ndarray]:
    boxes: Dict[str, list] = {}
    for path, box, _, ann_id in samples:
        if ann_id >= 0:
            boxes.setdefault(path, []).append(box)
    return {k: np.stack(v) for k, v in boxes.items()}


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
    Negative placeholders (``negatives.add_negative_samples``) get a random box with IoU < ``negative_iou``
    with every object of their image (``objects``: ``{path: boxes}``, e.g. ``object_boxes``; default: the
    samples' own boxes), drawn per epoch (a fixed generator per batch when ``train=False``).

    Multi-resolution (routed) training and evaluation: an index may be an ``(index, size)`` pair
    (``sampler.RoutedBatchSampler`` yields them; one size per batch), and the crop is then cut at that size,
    augmented by ``transform_for_size(size)`` (built once per size, e.g. ``build_train_transform``;
    ``transform`` serves ``input_size``). Plain indices are cropped at ``input_size``.
    """

    def __init__(self, samples: Union[CocoSamples, Sequence[Sample]], input_size: int, *,
                 context: float = DEFAULT_CONTEXT, mode: str = "square", train: bool = False,
                 jitter_iou: Optional[float] = None, transform: Optional[Callable] = None, seed: int = 0,
                 negative_iou: float = 0.3, objects: Optional[Dict[str, np.ndarray]] = None,
                 transform_for_size: Optional[Callable[[int], Callable]] = None):
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
        self.transform_for_size = transform_for_size if train else None
        self._transforms: Dict[int, Callable] = {}  # transform_for_size's, per size other than input_size
        self.seed = int(seed)
        self.negative_iou = float(negative_iou)
        self._objects = objects if objects is not None else _sample_boxes(self.samples)  # negatives avoid them
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
            for size, t in self._transforms.items():
                self._seed_transform(t, size)
        return self._rng

    def _seed_transform(self, transform: Callable, size: int) -> None:
        # Other sizes' transforms: seeded from (SEED, torch seed, size), apart from the main stream, so that
        # when a size's transform is first built does not shift any other draw.
        if hasattr(transform, "set_random_seed") and self._rng_key is not None:
            seq = np.random.SeedSequence([self.seed, self._rng_key[1] % (1 << 63), int(size)])
            transform.set_random_seed(int(seq.generate_state(1)[0] >> 1))

    def _transform(self, size: int) -> Optional[Callable]:
        if size == self.input_size or self.transform_for_size is None:
            if size != self.input_size and self.transform is not None:
                raise ValueError(f"CropDataset: a {size} px crop asked for, but the training transform is for "
                                 f"{self.input_size} px and no transform_for_size was given")
            return self.transform
        if size not in self._transforms:
            self._transforms[size] = self.transform_for_size(size)
            self._seed_transform(self._transforms[size], size)
        return self._transforms[size]

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

    def _crops(self, img: np.ndarray, boxes: np.ndarray, size: int) -> torch.Tensor:
        S = int(size)
        transform = self._transform(S)
        if transform is None:
            return extract_crops(img, boxes, S, context=self.context, mode=self.mode, backend="cv2")
        crops = extract_crops_hwc(img, boxes, S, context=self.context, mode=self.mode)
        out = np.stack([transform(image=c)["image"] for c in crops])
        if out.shape[1:] != (S, S, 3) or out.dtype != np.uint8:
            raise ValueError(f"transform must return uint8 {S}x{S}x3 crops, got {out.dtype} {out.shape[1:]}")
        return torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255)

    def _group_boxes(self, img: np.ndarray, path: str, group: List[Tuple[int, Sample]],
                     rng: Optional[np.random.Generator]) -> Tuple[List[int], np.ndarray]:
        """One image's batch positions and boxes: ground-truth boxes (jittered when training), then detector
        boxes as they are, then negatives drawn for this epoch (in that order, so that without detector boxes
        and negatives the draws are exactly those of a plain dataset)."""
        gt = [(p, s) for p, s in group if s[3] >= 0]
        fixed = [(p, s) for p, s in group if s[3] == DETECTION_ANN_ID]
        negatives = [p for p, s in group if is_negative(s)]
        boxes = np.stack([s[1] for _, s in gt]).astype(np.float32) if gt else np.zeros((0, 4), np.float32)
        if gt and self.jitter_iou is not None:
            boxes = jitter_boxes(boxes, self.jitter_iou, rng)
        if fixed:
            boxes = np.concatenate([boxes, np.stack([s[1] for _, s in fixed]).astype(np.float32)])
        if negatives:
            neg_rng = rng if rng is not None else np.random.default_rng([self.seed, negatives[0]])
            boxes = np.concatenate([boxes, random_negative_boxes(
                img.shape[:2], self._objects.get(path, np.zeros((0, 4))), len(negatives), self.negative_iou,
                neg_rng)])
        return [p for p, _ in gt] + [p for p, _ in fixed] + negatives, boxes

    def _split(self, items: Sequence) -> Tuple[List[int], int]:
        """Indices and the one crop size of a batch of indices or ``(index, size)`` pairs."""
        indices, sizes = [], set()
        for item in items:
            if isinstance(item, (tuple, list)):
                indices.append(int(item[0]))
                sizes.add(int(item[1]))
            else:
                indices.append(int(item))
                sizes.add(self.input_size)
        if len(sizes) > 1:
            raise ValueError(f"CropDataset: a batch holds one crop size, got {sorted(sizes)}")
        return indices, sizes.pop() if sizes else self.input_size

    def __getitems__(self, items: Sequence) -> Tuple[torch.Tensor, torch.Tensor]:
        indices, size = self._split(items)
        groups: "OrderedDict[str, List[int]]" = OrderedDict()
        for pos, i in enumerate(indices):
            groups.setdefault(self.samples[i][0], []).append(pos)
        rng = self._generator() if self.train else None  # also (re)seeds the transform for this epoch/worker
        out = torch.empty((len(indices), 3, size, size))
        labels = torch.empty(len(indices), dtype=torch.long)
        for path, group in groups.items():
            img = self._image(path)
            positions, boxes = self._group_boxes(img, path, [(p, self.samples[indices[p]]) for p in group], rng)
            pos_t = torch.tensor(positions)
            out[pos_t] = self._crops(img, boxes, size)
            labels[pos_t] = torch.tensor([self.samples[indices[p]][2] for p in positions])
        return (normalize(out) if self.train else out), labels

    def __getitem__(self, index) -> Tuple[torch.Tensor, int]:
        """``index``: a sample index, or an ``(index, size)`` pair."""
        x, y = self.__getitems__([index])
        return x[0], int(y[0])
