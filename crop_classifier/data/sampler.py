"""Batches of crop samples that keep each image's boxes together, for one or several processes."""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, Sequence, Tuple, Union

import numpy as np
from torch.utils.data import Sampler

from .coco import CocoSamples, Sample

__all__ = ["ImageGroupedBatchSampler", "RoutedBatchSampler"]


class ImageGroupedBatchSampler(Sampler):
    """Yields lists of sample indices: images in (per-epoch shuffled) order, each image's boxes together,
    cut into batches of ``batch_size`` boxes.

    Decoding dominates data loading when the model is fast (GPU), so keeping an image's boxes in one
    batch means each image is read about once per epoch (an image cut by a batch boundary spans two
    consecutive batches). The price is correlated batches: with small batches (CPU, batch 8) one image's
    crops fill a batch, and BatchNorm then normalises with the statistics of one scene, which stalls
    training (docs/training.md). ``group_by_image=False`` shuffles boxes over the whole epoch instead;
    every box then costs a decode, which is cheap next to a CPU training step.

    With ``num_replicas > 1`` the epoch's order is cut into global batches of ``batch_size *
    num_replicas`` boxes and rank ``r`` takes the ``r``-th contiguous part of each: step ``k``'s global
    batch (the union of the ranks' ``k``-th batches) is exactly single-process batch ``k`` with the
    same global batch size, whatever the world size, so distributed training sees the data in the same
    order and a run resumes under another world size. Images stay grouped (a rank's boxes are a
    subsequence of the epoch order), and every rank yields the same number of batches (``len()``), as
    distributed training needs. ``drop_last=True``: full global batches only. ``drop_last=False``: every
    box exactly once; the last global batch is split as evenly as possible (its boxes repeat from the
    start of the epoch only when it holds fewer boxes than there are ranks).
    Deterministic in ``(seed, epoch)``; call ``set_epoch(e)`` before each epoch.
    """

    def __init__(self, samples: Union[CocoSamples, Sequence[Sample]], batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, num_replicas: int = 1, rank: int = 0,
                 group_by_image: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        items = samples.samples if isinstance(samples, CocoSamples) else samples
        groups: Dict[str, List[int]] = {}
        for i, s in enumerate(items):
            groups.setdefault(s[0], []).append(i)
        self.groups = [np.array(g, dtype=np.int64) for g in groups.values()]
        self.num_samples = len(items)
        if self.num_samples < num_replicas:
            raise ValueError(f"{self.num_samples} samples cannot be shared by {num_replicas} processes")
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.group_by_image = bool(group_by_image)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        global_batch = self.batch_size * self.num_replicas
        if self.drop_last:
            return self.num_samples // global_batch
        return math.ceil(self.num_samples / global_batch)

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.concatenate(self.groups) if self.groups else np.zeros(0, np.int64)
        rng = np.random.default_rng([self.seed, self.epoch])
        if not self.group_by_image:
            return rng.permutation(self.num_samples)
        perm = rng.permutation(len(self.groups))
        return np.concatenate([rng.permutation(self.groups[g]) for g in perm])

    def __iter__(self) -> Iterator[List[int]]:
        order = self._order()
        B, R = self.batch_size, self.num_replicas
        G = B * R
        for k in range(len(self)):
            chunk = order[k * G:(k + 1) * G]
            if len(chunk) == G:
                yield chunk[self.rank * B:(self.rank + 1) * B].tolist()
                continue
            # The last, short global batch (drop_last=False): split evenly; with fewer boxes than ranks,
            # pad from the epoch start so that no rank is left without a batch.
            if len(chunk) < R:
                chunk = np.concatenate([chunk, np.resize(order, R - len(chunk))])
            yield np.array_split(chunk, R)[self.rank].tolist()


class RoutedBatchSampler(Sampler):
    """Multi-resolution training batches: each sample is fed at the input size of the route its native side
    gives (``models.routing.Routes.sample``: redrawn each epoch, ``jitter`` of them at a neighbouring route),
    and every batch holds one route's samples, so the network sees one input size per step.

    Yields lists of ``(index, input size)`` pairs (``CropDataset``/``TensorCropDataset`` take such pairs).
    Per epoch, each route's samples are shuffled and cut into global batches of ``batch_size *
    num_replicas`` (rank ``r`` takes the ``r``-th part of each, as ``ImageGroupedBatchSampler`` does), and the
    routes' batches are interleaved in a shuffled order, so the learning rate schedule does not meet one
    resolution after another. ``len()`` is the same every epoch (as distributed training and the schedule
    need): ``N // global batch - (routes - 1)``, a bound every draw reaches; surplus batches are left out.
    ``drop_last=False`` (evaluation, one process): every sample once, at its own route (no jitter), in
    route order. Deterministic in ``(seed, epoch)``; call ``set_epoch(e)`` before each epoch.
    """

    def __init__(self, sides: Sequence[float], routes, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = True, num_replicas: int = 1, rank: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need num_replicas >= 1 and 0 <= rank < num_replicas, got {num_replicas}, {rank}")
        if not drop_last and num_replicas > 1:
            raise ValueError("RoutedBatchSampler: drop_last=False (every sample once) is for one process")
        self.sides = np.asarray(sides, dtype=np.float64).reshape(-1)
        self.routes = routes
        self.batch_size, self.shuffle, self.seed = int(batch_size), bool(shuffle), int(seed)
        self.drop_last, self.num_replicas, self.rank = bool(drop_last), int(num_replicas), int(rank)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        if not self.drop_last:
            counts = np.bincount(self.routes.assign(self.sides), minlength=len(self.routes))
            return int(sum(math.ceil(c / self.batch_size) for c in counts))
        global_batch = self.batch_size * self.num_replicas
        return max(0, len(self.sides) // global_batch - (len(self.routes) - 1))

    def _routes(self, rng: np.random.Generator) -> np.ndarray:
        if self.drop_last and self.shuffle:
            return self.routes.sample(self.sides, rng)
        return self.routes.assign(self.sides)

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        route = self._routes(rng)
        sizes = self.routes.input_sizes
        B, R = self.batch_size, self.num_replicas
        G = B * R if self.drop_last else B
        batches: List[Tuple[int, np.ndarray]] = []
        for r in range(len(sizes)):
            idx = np.flatnonzero(route == r)
            if self.shuffle:
                idx = rng.permutation(idx)
            cuts = range(0, len(idx) - G + 1 if self.drop_last else len(idx), G)
            batches.extend((sizes[r], idx[k:k + G]) for k in cuts)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.drop_last:
            batches = batches[:len(self)]
        for size, chunk in batches:
            part = chunk[self.rank * B:(self.rank + 1) * B] if self.drop_last else chunk
            yield [(int(i), int(size)) for i in part]
