"""The distributed image-grouped sampler: step k's global batch (the union of the ranks' k-th batches) is
single-process batch k of the same global batch size, for every world size."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crop_classifier.data import ImageGroupedBatchSampler


def _samples(sizes):
    return [(f"img{k}.jpg", np.zeros(4, np.float32), 0, 100 * k + j) for k, n in enumerate(sizes) for j in range(n)]


def _epoch(samples, batch, replicas, rank, *, drop_last, epoch, seed=5):
    s = ImageGroupedBatchSampler(samples, batch, seed=seed, num_replicas=replicas, rank=rank, drop_last=drop_last)
    s.set_epoch(epoch)
    batches = list(s)
    assert len(batches) == len(s)
    return batches


@settings(max_examples=60, deadline=None, derandomize=True)
@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=12), per_rank=st.integers(1, 6),
       replicas=st.integers(2, 4), epoch=st.integers(0, 3))
def test_global_batch_is_the_single_process_batch(sizes, per_rank, replicas, epoch):
    samples = _samples(sizes)
    if len(samples) < replicas:
        return
    single = _epoch(samples, per_rank * replicas, 1, 0, drop_last=True, epoch=epoch)
    ranks = [_epoch(samples, per_rank, replicas, r, drop_last=True, epoch=epoch) for r in range(replicas)]
    assert all(len(b) == len(single) for b in ranks)
    for k, global_batch in enumerate(single):
        # Rank order concatenated is the single-process batch itself, not just the same set.
        assert [i for r in range(replicas) for i in ranks[r][k]] == global_batch
        assert all(len(ranks[r][k]) == per_rank for r in range(replicas))


@pytest.mark.parametrize("replicas", [2, 3])
def test_last_short_global_batch_covers_every_box_once(replicas):
    samples = _samples([3, 1, 7, 2, 5, 4, 1, 6, 2])  # 31 boxes: 3 global batches of 8 and one of 7 (2 ranks)
    single = _epoch(samples, 4 * replicas, 1, 0, drop_last=False, epoch=1)
    ranks = [_epoch(samples, 4, replicas, r, drop_last=False, epoch=1) for r in range(replicas)]
    for k, global_batch in enumerate(single):
        assert [i for r in range(replicas) for i in ranks[r][k]] == global_batch
    last = [len(ranks[r][-1]) for r in range(replicas)]
    assert max(last) - min(last) <= 1 and min(last) >= 1  # split evenly, nobody idle


def test_order_does_not_depend_on_world_size_so_resume_can_change_it():
    samples = _samples([4, 4, 4, 4, 4, 4])  # 24 boxes, global batch 8
    flat = {}
    for replicas in (1, 2, 4):
        ranks = [_epoch(samples, 8 // replicas, replicas, r, drop_last=True, epoch=3) for r in range(replicas)]
        flat[replicas] = [i for k in range(len(ranks[0])) for r in range(replicas) for i in ranks[r][k]]
    assert flat[1] == flat[2] == flat[4] and sorted(flat[1]) == list(range(24))
    assert flat[1] != [i for b in _epoch(samples, 8, 1, 0, drop_last=True, epoch=4) for i in b]


def test_fewer_boxes_than_ranks_in_the_last_batch_pads_instead_of_starving_a_rank():
    samples = _samples([2, 3])  # 5 boxes, 4 ranks of 1: one full global batch, then 1 box for 4 ranks
    ranks = [_epoch(samples, 1, 4, r, drop_last=False, epoch=0) for r in range(4)]
    assert all(len(b) == 2 and all(len(x) == 1 for x in b) for b in ranks)
    assert {i for b in ranks for x in b for i in x} == set(range(5))
