"""Datasets and loaders from the config's dataset names (see ``crop_classifier.config``)."""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from fvcore.common.config import CfgNode
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from ..config import check_dataset_files, parse_dataset_name
from ..data import (CocoSamples, CropDataset, ImageGroupedBatchSampler, build_train_transform, collate_identity,
                    add_negative_samples, generate_scenes, load_coco_samples, normalize, object_boxes)
from ..data.detection_crops import DetectionMatch, detection_samples
from ..data.sampler import RoutedBatchSampler
from ..detectors.detections_file import DetectionsFile
from ..models.routing import Routes, native_sides
from .distributed import main_process_first

logger = logging.getLogger(__name__)


def dataset_files(name: str) -> Tuple[str, str]:
    """``(annotation file, image folder)`` of a dataset name; ``synthetic:`` scenes are generated first when
    missing. Synthetic scene ``i`` depends on ``(SEED, basename(DIR), i)``: folders named differently
    (train/val) hold different scenes even with the same seed."""
    spec = parse_dataset_name(name)
    if spec["kind"] == "coco":
        check_dataset_files(name, spec["ann_file"], spec["image_dir"])
        return spec["ann_file"], spec["image_dir"]
    out_dir = Path(spec["dir"])
    with main_process_first():  # one process generates, the others then read
        ann = generate_scenes(out_dir, spec["num_images"], seed=spec["seed"], split_name=out_dir.name)
    return str(ann), str(out_dir)


def load_dataset(name: str, *, class_names: Optional[Sequence[str]] = None, min_size: float = 0) -> CocoSamples:
    """Crop samples of one dataset name (``dataset_files``)."""
    ann, image_dir = dataset_files(name)
    return load_coco_samples(ann, image_dir, class_names=class_names, min_size=min_size)


def datasets_object_boxes(names: Sequence[str]) -> Dict[str, np.ndarray]:
    """Every annotated box of the named datasets per image path (what background crops avoid)."""
    out: Dict[str, np.ndarray] = {}
    for name in names:
        out.update(object_boxes(*dataset_files(name)))
    return out


def load_datasets(names: Sequence[str], *, class_names: Optional[Sequence[str]] = None,
                  min_size: float = 0) -> Tuple[List, List[str]]:
    """Concatenated samples of several datasets and their class names. Without ``class_names`` the first
    dataset's categories define them, and the others are read against that list."""
    samples: List = []
    for name in names:
        ds = load_dataset(name, class_names=class_names, min_size=min_size)
        class_names = list(ds.class_names)
        samples.extend(ds.samples)
        logger.info("dataset %s: %d crops of %d classes", name, len(ds.samples), len(ds.class_names))
    return samples, list(class_names or [])


def detector_boxes(files: Sequence[str]) -> Dict[str, np.ndarray]:
    """``{image base name: XYXY boxes}`` of first-stage detection files (read as the ``detections:`` first stage
    reads them); a malformed entry is an error naming the file and the entry."""
    out: Dict[str, list] = {}
    for path in files:
        det = DetectionsFile(path)
        if det.errors:
            raise ValueError(f"config key DATASETS.DETECTIONS: {det.errors[0]}")
        for key, entries in det.by_key.items():
            out.setdefault(key, []).append(entries.boxes)
    return {k: np.concatenate(v) for k, v in out.items()}


def extra_training_samples(cfg: CfgNode, samples: Sequence, num_classes: int) -> List:
    """The crops trained besides the ground truth: detector boxes (``DATASETS.DETECTIONS``), else with
    ``MODEL.BACKGROUND_CLASS`` random background placeholders; labels ``0 .. num_classes - 1``, background
    ``num_classes``."""
    bg = num_classes if cfg.MODEL.BACKGROUND_CLASS else None
    if cfg.DATASETS.DETECTIONS:
        match = DetectionMatch(cfg.INPUT.DETECTION_POS_IOU, cfg.INPUT.DETECTION_NEG_IOU, cfg.INPUT.DETECTION_RATIO,
                               bg, cfg.SEED)
        extra = detection_samples(detector_boxes(cfg.DATASETS.DETECTIONS), samples,
                                  datasets_object_boxes(cfg.DATASETS.TRAIN), match)
        logger.info("detector boxes: %d training crops (%d background) besides %d ground-truth crops",
                    len(extra), sum(s[2] == bg for s in extra), len(samples))
        return extra
    if bg is not None:
        return add_negative_samples(samples, cfg.INPUT.BACKGROUND_RATIO, bg)[len(samples):]
    return []


def sample_native_sides(samples: Sequence, context: float) -> np.ndarray:
    """``[N]`` native side (px, ``models.routing.native_sides``: the box's longer side with its context margin)
    of each sample, what routing goes by. A background placeholder (NaN box, drawn at crop time at the scale
    of its image's objects) takes the median side of its image's boxes (of all boxes when its image has none)."""
    boxes = np.stack([np.asarray(s[1], np.float64).reshape(4) for s in samples]) if len(samples) else np.zeros((0, 4))
    finite = np.isfinite(boxes).all(axis=1)
    sides = np.full(len(samples), np.nan)
    sides[finite] = native_sides(boxes[finite], context)
    if finite.all():
        return sides
    overall = float(np.median(sides[finite])) if finite.any() else 1.0
    per_image: Dict[str, List[float]] = {}
    for s, side, ok in zip(samples, sides, finite):
        if ok:
            per_image.setdefault(s[0], []).append(side)
    for i in np.flatnonzero(~finite):
        own = per_image.get(samples[i][0])
        sides[i] = float(np.median(own)) if own else overall
    return sides


def build_train_loader(cfg: CfgNode, samples: Sequence, input_size: int, *, per_rank_batch: int,
                       num_replicas: int = 1, rank: int = 0, routes: Optional[Routes] = None) -> DataLoader:
    """Shuffled batches of augmented crops (grouped by image unless ``DATALOADER.GROUP_BY_IMAGE`` is off),
    split over ``num_replicas`` processes. With ``routes`` (a routed classifier; ``input_size`` its smallest
    route): ``RoutedBatchSampler`` batches, each sample cropped at its (jittered) route's size, one size per
    batch, shuffled over boxes (GROUP_BY_IMAGE does not apply).

    Call ``loader.batch_sampler.set_epoch(e)`` before each epoch. Workers are not persistent: each epoch's
    are seeded from the torch generator, which the trainer seeds per epoch.
    """
    augment = partial(build_train_transform, low_resolution=cfg.INPUT.AUGMENT_LOW_RESOLUTION)
    dataset = CropDataset(
        samples, input_size, context=cfg.CROP.CONTEXT, mode=cfg.CROP.MODE, train=True,
        jitter_iou=cfg.INPUT.JITTER_IOU or None,
        transform=augment(input_size) if cfg.INPUT.AUGMENT else None,
        transform_for_size=augment if cfg.INPUT.AUGMENT else None,
        seed=cfg.SEED, negative_iou=cfg.INPUT.BACKGROUND_MAX_IOU,
        objects=(datasets_object_boxes(cfg.DATASETS.TRAIN)
                 if cfg.MODEL.BACKGROUND_CLASS and not cfg.DATASETS.DETECTIONS else None),
    )
    if routes is not None:
        sampler = RoutedBatchSampler(sample_native_sides(samples, cfg.CROP.CONTEXT), routes, per_rank_batch,
                                     seed=cfg.SEED, drop_last=True, num_replicas=num_replicas, rank=rank)
    else:
        sampler = ImageGroupedBatchSampler(
            samples, per_rank_batch, shuffle=True, seed=cfg.SEED, drop_last=True,
            num_replicas=num_replicas, rank=rank, group_by_image=cfg.DATALOADER.GROUP_BY_IMAGE,
        )
    if len(sampler) == 0:
        raise ValueError(
            f"the training set has {len(samples)} crops, fewer than one batch of {per_rank_batch} per process"
            + (f" and route ({len(routes)} routes)" if routes is not None else "")
            + "; lower SOLVER.IMS_PER_BATCH or add data"
        )
    return DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
                      collate_fn=collate_identity, pin_memory=torch.cuda.is_available())


class TensorCropDataset(Dataset):
    """Training batches from crops held in memory (uint8 ``[N, 3, S, S]``): random horizontal flips, then the
    training normalisation (``data.transforms.normalize``, as ``CropDataset`` applies it).

    The flips draw from torch's global generator, which the trainer seeds per epoch, so runs repeat.
    Use with ``collate_fn=collate_identity`` (``__getitems__`` returns the collated batch).
    """

    def __init__(self, crops: torch.Tensor, labels: torch.Tensor, *, flip: bool = True):
        if crops.dtype != torch.uint8 or crops.dim() != 4 or crops.shape[1] != 3:
            raise ValueError(f"crops must be uint8 [N, 3, S, S], got {crops.dtype} {tuple(crops.shape)}")
        if labels.shape != crops.shape[:1]:
            raise ValueError(f"labels must be [N] = [{crops.shape[0]}], got {tuple(labels.shape)}")
        self.crops, self.labels, self.flip = crops, labels.long(), bool(flip)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        x = self.crops[idx].float().div_(255)
        if self.flip:
            flip = torch.rand(len(idx)) < 0.5
            x[flip] = x[flip].flip(-1)
        return normalize(x), self.labels[idx]

    def __getitem__(self, index: int) -> Tuple[torch.Tensor, int]:
        x, y = self.__getitems__([index])
        return x[0], int(y[0])


class RoutedTensorCropDataset(Dataset):
    """``TensorCropDataset`` for multi-resolution (routed) training: each sample's crop held at every route's
    input size (``crops``: ``{size: uint8 [N, 3, size, size]}``), its native side (``sides [N]``, px: what
    ``RoutedBatchSampler`` routes by) and label. ``__getitems__`` takes the sampler's ``(index, size)`` pairs
    (one size per batch) and returns the batch at that size, flipped and normalised as ``TensorCropDataset``
    does."""

    def __init__(self, crops: Mapping[int, torch.Tensor], labels: torch.Tensor, sides, *, flip: bool = True):
        if not crops:
            raise ValueError("crops must hold at least one input size")
        self.sides = np.asarray(sides, dtype=np.float64).reshape(-1)
        self.by_size = {int(s): TensorCropDataset(x, labels, flip=flip) for s, x in crops.items()}
        for size, ds in self.by_size.items():
            if ds.crops.shape[-2:] != (size, size):
                raise ValueError(f"crops[{size}] must be [N, 3, {size}, {size}], got {tuple(ds.crops.shape)}")
        if len(self.sides) != len(labels):
            raise ValueError(f"sides must be [N] = [{len(labels)}], got {len(self.sides)} values")
        self.labels = labels.long()

    @property
    def sizes(self) -> Tuple[int, ...]:
        return tuple(sorted(self.by_size))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, pairs: Sequence[Tuple[int, int]]) -> Tuple[torch.Tensor, torch.Tensor]:
        sizes = {int(s) for _, s in pairs}
        if len(sizes) != 1:
            raise ValueError(f"a routed batch holds one input size, got {sorted(sizes)}")
        size = sizes.pop()
        if size not in self.by_size:
            raise ValueError(f"no crops at {size} px (held: {list(self.sizes)})")
        return self.by_size[size].__getitems__([int(i) for i, _ in pairs])

    def __getitem__(self, pair: Tuple[int, int]) -> Tuple[torch.Tensor, int]:
        x, y = self.__getitems__([pair])
        return x[0], int(y[0])


def build_dataset_train_loader(cfg: CfgNode, dataset: Dataset, *, per_rank_batch: int, num_replicas: int = 1,
                               rank: int = 0, routes: Optional[Routes] = None) -> DataLoader:
    """Shuffled, drop-last batches of a prebuilt training dataset (one returning whole batches from
    ``__getitems__``, e.g. ``TensorCropDataset``), split over ``num_replicas`` processes. ``set_epoch`` is on
    ``loader.batch_sampler.sampler``. With ``routes`` (``models.routing.Routes``; the dataset a
    ``RoutedTensorCropDataset``): ``RoutedBatchSampler`` batches of one input size each, ``set_epoch`` on
    ``loader.batch_sampler``."""
    if routes is not None:
        missing = [s for s in routes.input_sizes if s not in getattr(dataset, "sizes", ())]
        if missing:
            raise ValueError(f"routed training needs crops at every route's input size {list(routes.input_sizes)}; "
                             f"the dataset lacks {missing} (a RoutedTensorCropDataset holds them)")
        batches = RoutedBatchSampler(dataset.sides, routes, per_rank_batch, seed=cfg.SEED, num_replicas=num_replicas,
                                     rank=rank, drop_last=True)
    else:
        sampler = DistributedSampler(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=cfg.SEED,
                                     drop_last=True)
        batches = BatchSampler(sampler, per_rank_batch, drop_last=True)
    if len(batches) == 0:
        raise ValueError(f"the training set has {len(dataset)} crops, fewer than one batch of {per_rank_batch} per "
                         "process" + (" and route" if routes is not None else "") +
                         "; lower SOLVER.IMS_PER_BATCH or add data")
    return DataLoader(dataset, batch_sampler=batches, num_workers=cfg.DATALOADER.NUM_WORKERS,
                      collate_fn=collate_identity, pin_memory=torch.cuda.is_available())


def build_test_loader(cfg: CfgNode, samples: Sequence, input_size: int, *, context: float, mode: str,
                      routes: Optional[Routes] = None) -> DataLoader:
    """Deterministic batches of un-augmented crops in [0, 1] (not normalised: they go through the classifier's
    inference form), in sample order (grouped by image when consecutive). With ``routes``: each crop at its
    own route's size (no jitter), batched per route, so in route order (``evaluation.loader_sample_order``)."""
    dataset = CropDataset(samples, input_size, context=context, mode=mode, train=False)
    if routes is not None:
        sampler = RoutedBatchSampler(sample_native_sides(samples, context), routes, cfg.TEST.IMS_PER_BATCH,
                                     shuffle=False, drop_last=False)
    else:
        sampler = ImageGroupedBatchSampler(samples, cfg.TEST.IMS_PER_BATCH, shuffle=False, drop_last=False)
    # Its own generator: evaluating never advances the training run's random streams.
    return DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.DATALOADER.NUM_WORKERS,
                      collate_fn=collate_identity, pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(0))
