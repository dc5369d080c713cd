"""Batches of crop samples that keep each image's boxes together, for one or several processes."""
from __future__ import annotations

import math
from typing import Dict, Iterator, List, Sequence, Union

import numpy as np
from torch.utils.data import Sampler

from .coco import CocoSamples, Sample

__all__ = ["ImageGroupedBatchSampler"]


class ImageGroupedBatchSampler(Sampler):
    """Yields lists of sample indices: images in (per-epoch shuffled) order, each image's boxes together,
    cut into batches of ``batch_size`` boxes.

    Decoding dominates CPU data loading, so keeping an image's boxes in one batch means each image is
    read about once per epoch (an image cut by a batch boundary spans two consecutive batches).

    With ``num_replicas > 1`` the epoch's ordered boxes are split into ``num_replicas`` contiguous,
    disjoint shares (sizes differing by at most one); every rank yields the same number of batches
    (``len()``), as distributed training needs. ``drop_last=True``: full batches only, the tail of
    each share is left out. ``drop_last=False``: every box exactly once; a share's last batch may
    be smaller (batches are split further when a share would otherwise have fewer batches than the
    others; indices repeat only in the degenerate case of a share smaller than the batch count).
    Deterministic in ``(seed, epoch)``; call ``set_epoch(e)`` before each epoch.
    """

    def __init__(self, samples: Union[CocoSamples, Sequence[Sample]], batch_size: int, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = False, num_replicas: int = 1, rank: int = 0):
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
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _share(self, rank: int):
        T, R = self.num_samples, self.num_replicas
        return rank * T // R, (rank + 1) * T // R

    def __len__(self) -> int:
        T, R, B = self.num_samples, self.num_replicas, self.batch_size
        if self.drop_last:
            return (T // R) // B
        return math.ceil(math.ceil(T / R) / B)

    def _order(self) -> np.ndarray:
        if not self.shuffle:
            return np.concatenate(self.groups) if self.groups else np.zeros(0, np.int64)
        rng = np.random.default_rng([self.seed, self.epoch])
        perm = rng.permutation(len(self.groups))
        return np.concatenate([rng.permutation(self.groups[g]) for g in perm])

    def __iter__(self) -> Iterator[List[int]]:
        order = self._order()
        lo, hi = self._share(self.rank)
        share = order[lo:hi]
        nb, B = len(self), self.batch_size
        if nb == 0:
            return
        if self.drop_last:
            for k in range(nb):
                yield share[k * B:(k + 1) * B].tolist()
            return
        m = len(share)
        if m < nb:  # degenerate: fewer boxes than batches; repeat some of this share's own boxes
            share = np.resize(share, nb)
            m = nb
        sizes = [B] * (nb - 1) + [m - (nb - 1) * B]
        if sizes[-1] < 1:  # a share one box short of the others' batch count: split evenly instead
            sizes = [len(a) for a in np.array_split(np.arange(m), nb)]
        start = 0
        for n in sizes:
            yield share[start:start + n].tolist()
            start += n
