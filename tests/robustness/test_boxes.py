"""Boxes: NaN/inf, negative, inverted, outside, zero-area, 10,000 on one image, none at all.

Property tests (hypothesis, derandomized, few examples) for ``extract_crops`` and the fusion step.
tests/test_crops.py already holds shape/range properties for arbitrary boxes; these add what a
crop *contains* and that garbage boxes never contaminate good ones or the fused output.
"""
import math
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from crop_classifier.crops import extract_crops, valid_boxes_mask
from crop_classifier.second_stage import FUSION_MODES, ClassMap, SecondStage, fuse
from classifier_helpers import inference_form

PROPERTY = settings(max_examples=30, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
H, W = 40, 56
nan, inf = float("nan"), float("inf")

coord = st.one_of(
    st.floats(-80, 140, allow_nan=False, width=32),
    st.sampled_from([nan, inf, -inf, 0.0, -1.0, 1e30, -1e30]),
)
any_box = st.tuples(coord, coord, coord, coord)


@st.composite
def inside_box(draw):
    x1 = draw(st.floats(0, W - 1))
    y1 = draw(st.floats(0, H - 1))
    x2 = draw(st.floats(x1, W))
    y2 = draw(st.floats(y1, H))
    return (x1, y1, x2, y2)


def _img(value: int = 137) -> torch.Tensor:
    return torch.full((3, H, W), value, dtype=torch.uint8)


# --------------------------------------------------------------------------- extract_crops


@PROPERTY
@given(box=inside_box(), size=st.integers(1, 20), backend=st.sampled_from(["cv2", "roi_align"]))
def test_any_box_inside_a_constant_image_reads_that_constant(box, size, backend):
    """Wherever a box lies inside the image (zero-area and sub-pixel ones too), its crop is the image's
    pixels and nothing else: no zero padding, no out-of-bounds reads."""
    crops = extract_crops(_img(137), torch.tensor([box]), size, backend=backend)
    assert crops.shape == (1, 3, size, size)
    inner = crops[0]
    # roi_align fades toward zero within half a pixel of the border; the cv2 path rounds to whole pixels.
    x1, y1, x2, y2 = box
    touches = min(x1, y1) < 1 or x2 > W - 1 or y2 > H - 1
    if backend == "cv2" or not touches:
        assert torch.allclose(inner, torch.full_like(inner, 137 / 255), atol=1.5 / 255)
    else:
        assert inner.max() <= 137 / 255 + 1e-6 and inner.mean() > 0.25 * 137 / 255


@PROPERTY
@given(
    garbage=st.lists(any_box, min_size=0, max_size=8),
    good=inside_box(),
    pos=st.integers(0, 8),
    chunk=st.integers(1, 4),
    backend=st.sampled_from(["cv2", "roi_align"]),
)
def test_garbage_boxes_do_not_touch_their_neighbours(garbage, good, pos, chunk, backend):
    """A good box's crop is the same alone or among NaN/inf/inverted/outside boxes, across chunk borders."""
    img = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, H, W), dtype=np.uint8))
    boxes = list(garbage)
    pos = min(pos, len(boxes))
    boxes.insert(pos, good)
    b = torch.tensor(boxes, dtype=torch.float64)
    out = extract_crops(img, b, 12, context=0.1, backend=backend, chunk_size=chunk)
    alone = extract_crops(img, torch.tensor([good], dtype=torch.float64), 12, context=0.1, backend=backend)
    assert torch.equal(out[pos], alone[0])
    valid = valid_boxes_mask(b, (H, W))
    assert torch.isfinite(out).all() and torch.all(out[~valid] == 0)


def test_box_containers_and_dtypes_agree():
    img = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, H, W), dtype=np.uint8))
    boxes = [[1, 2, 30, 33], [5.5, 6.25, 7.75, 39.0]]
    ref = extract_crops(img, torch.tensor(boxes, dtype=torch.float32), 10)
    for b in (boxes, np.array(boxes, np.float64), np.array(boxes, np.float16), torch.tensor(boxes, dtype=torch.float64),
              np.array([[1, 2, 30, 33], [5, 6, 7, 39]], np.int64)[:1]):
        got = extract_crops(img, b, 10)
        assert torch.allclose(got, ref[: len(got)], atol=1e-2 if getattr(b, "dtype", None) == np.float16 else 1e-6)


@pytest.mark.parametrize("boxes", [torch.zeros((0, 4)), [], np.zeros((0, 4)), torch.zeros(0)])
def test_no_boxes_at_all(boxes):
    out = extract_crops(_img(), boxes, 16)
    assert out.shape == (0, 3, 16, 16)


def test_10000_boxes_on_one_image_bounded_temporaries():
    """10,000 boxes: the crops come out whole, and the temporaries beyond the output stay chunk-sized."""
    rng = np.random.default_rng(3)
    img = np.ascontiguousarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8))
    xy = rng.uniform(0, 600, (10000, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(1, 40, (10000, 2))], axis=1)
    boxes[::100] = nan  # some garbage among them
    size = 16
    out_bytes = 10000 * 3 * size * size * 4
    tracemalloc.start()
    try:
        crops = extract_crops(img, boxes, size, chunk_size=256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert crops.shape == (10000, 3, size, size) and torch.isfinite(crops).all()
    assert torch.all(crops[::100] == 0) and crops[1::100].abs().sum() > 0
    # NumPy reports its buffers to tracemalloc: the output plus a few chunk-sized stages, never 2x the output.
    assert peak < out_bytes + 16 * 256 * 3 * size * size * 4, f"peak {peak / 2**20:.1f} MiB vs output {out_bytes / 2**20:.1f}"
    assert torch.equal(crops[4321:4322], extract_crops(img, boxes[4321:4322], size))


# --------------------------------------------------------------------------- fusion


class TinyNet(nn.Module):
    """A deterministic stand-in classifier that records the largest batch it was given."""

    input_size = 12

    def __init__(self, k: int):
        super().__init__()
        g = torch.Generator().manual_seed(k)
        self.w = nn.Parameter(torch.randn(3, k, generator=g) * 3)
        self.max_batch = 0
        self.calls = 0

    def forward(self, x):
        self.max_batch = max(self.max_batch, x.shape[0])
        self.calls += 1
        return x.mean(dim=(2, 3)) @ self.w


@st.composite
def fusion_case(draw):
    D, K = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    det = [f"d{i}" for i in range(D)]
    cls = [f"c{i}" for i in range(K)] + (["d0"] if draw(st.booleans()) else [])  # sometimes a shared name
    spec = {}
    for d in det:
        choice = draw(st.integers(0, 3))
        if choice == 1:
            spec[d] = "*"
        elif choice == 2:
            spec[d] = draw(st.lists(st.sampled_from(cls), min_size=1, max_size=3, unique=True))
    n = draw(st.integers(0, 12))
    det_classes = torch.tensor(draw(st.lists(st.integers(0, D - 1), min_size=n, max_size=n)), dtype=torch.long)
    det_scores = torch.tensor(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)), dtype=torch.float32)
    logits = torch.tensor(draw(st.lists(st.lists(st.floats(-10, 10), min_size=len(cls), max_size=len(cls)),
                                        min_size=n, max_size=n)), dtype=torch.float32).reshape(n, len(cls))
    classified = torch.tensor(draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=torch.bool)
    return ClassMap(det, cls, spec), det_classes, det_scores, torch.softmax(logits, 1), classified


@PROPERTY
@given(case=fusion_case(), mode=st.sampled_from(FUSION_MODES))
def test_fusion_invariants(case, mode):
    cmap, dc, ds, probs, classified = case
    classes, scores, keep, cls_scores = fuse(dc, ds, probs, classified, cmap, mode)
    n, K = len(dc), len(cmap.classifier_classes)
    assert classes.shape == scores.shape == keep.shape == cls_scores.shape == (n,)
    assert torch.all((classes >= 0) & (classes < len(cmap.output_class_names)))
    assert torch.all(scores <= ds + 1e-6) and torch.all(scores >= 0)  # fusion never invents confidence
    used = classified & cmap.sets[dc].any(1) if n else classified
    untouched = ~used
    # boxes the classifier did not look at keep the detector's class, score and every box is kept
    assert torch.equal(classes[untouched], cmap.det_to_out[dc][untouched])
    assert torch.allclose(scores[untouched], ds[untouched]) and bool(keep[untouched].all())
    assert torch.isnan(cls_scores[untouched]).all() and torch.isfinite(cls_scores[used]).all()
    for i in torch.nonzero(used).flatten().tolist():
        allowed = cmap.sets[dc[i]]
        if mode == "replace":
            assert classes[i] < K and bool(allowed[classes[i]])  # the choice stays within the class's set
            assert math.isclose(float(probs[i, classes[i]]), float(probs[i][allowed].max()), abs_tol=1e-6)
        elif mode == "rescore":
            assert classes[i] == cmap.det_to_out[dc[i]]
            assert math.isclose(float(scores[i]), float(ds[i] * probs[i][allowed].sum()), rel_tol=1e-5, abs_tol=1e-7)
        else:
            assert bool(keep[i]) == bool(allowed[probs[i].argmax()])


def _stage(fusion="replace", **kw):
    return SecondStage(inference_form(TinyNet(3), ["a", "b", "c"], TinyNet.input_size), ["a", "b", "x"], fusion=fusion, **kw)


@PROPERTY
@given(boxes=st.lists(any_box, min_size=0, max_size=10), mode=st.sampled_from(FUSION_MODES))
def test_second_stage_survives_any_boxes(boxes, mode):
    """Garbage boxes never crash the stage, are never sent to the classifier, and every output row
    refers to one input box with a finite score."""
    n = len(boxes)
    b = torch.tensor(boxes, dtype=torch.float32).reshape(n, 4)
    c = torch.arange(n) % 3
    s = torch.linspace(0.2, 0.9, n)
    img = torch.from_numpy(np.random.default_rng(5).integers(0, 256, (3, H, W), dtype=np.uint8))
    stage = _stage(mode)
    (r,) = stage([img], [b], [c], [s])
    assert len(r) <= n and len(set(r.index.tolist())) == len(r)
    assert torch.equal(r.boxes, b[r.index]) or torch.allclose(r.boxes, b[r.index], equal_nan=True)
    valid = valid_boxes_mask(b, (H, W))
    assert not bool((r.classified & ~valid[r.index]).any()), "a box that cannot be cropped was classified"
    assert torch.isfinite(r.scores).all()
    if mode != "filter":
        assert len(r) == n or (mode == "replace" and stage.options.nms_thresh > 0)


def test_10000_boxes_through_the_second_stage_in_bounded_forwards():
    rng = np.random.default_rng(6)
    img = torch.from_numpy(rng.integers(0, 256, (3, 300, 400), dtype=np.uint8))
    xy = rng.uniform(0, (380, 280), (10000, 2))  # every box on the 400x300 image (off-image ones pass through)
    b = torch.from_numpy(np.concatenate([xy, xy + rng.uniform(2, 30, (10000, 2))], axis=1)).float()
    stage = _stage("rescore", max_crops_per_forward=512)
    (r,) = stage([img], [b], [torch.zeros(10000, dtype=torch.long)], [torch.full((10000,), 0.5)])
    assert len(r) == 10000 and bool(r.classified.all()) and torch.isfinite(r.scores).all()
    assert stage.classifier.net.max_batch <= 512 and stage.classifier.net.calls == math.ceil(10000 / 512)


def test_second_stage_with_no_boxes():
    stage = _stage()
    imgs = [_img(), _img(50)]
    out = stage(imgs, [torch.zeros((0, 4)), torch.tensor([[1.0, 1, 20, 20]])],
                [torch.zeros(0, dtype=torch.long), torch.tensor([0])], [torch.zeros(0), torch.tensor([0.8])])
    assert len(out[0]) == 0 and len(out[1]) == 1 and out[0].cls_probs.shape == (0, 3)
    assert stage([], [], [], []) == []
