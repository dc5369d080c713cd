"""extract_crops: geometry against OpenCV references, backends held together, edge boxes, devices."""
import math

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crop_classifier.crops import (
    CV2_TOLERANCE,
    crop_boxes,
    extract_crops,
    extract_crops_batch,
    extract_crops_hwc,
    valid_boxes_mask,
)

BACKENDS = ["cv2", "roi_align"]


def smooth_image(h=240, w=320, seed=0):
    """A band-limited RGB pattern (sinusoids + blurred noise), uint8 HWC."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([np.sin(xx / 11.0) * np.cos(yy / 17.0), np.cos(xx / 23.0 + yy / 29.0), np.sin((xx + yy) / 13.0)], -1)
    noise = cv2.GaussianBlur(np.random.default_rng(seed).normal(size=(h, w, 3)), (0, 0), 4) * 3
    return np.clip(127.5 + 90 * base + 20 * noise, 0, 255).astype(np.uint8)


def chw(img_hwc):
    return torch.from_numpy(np.ascontiguousarray(img_hwc)).permute(2, 0, 1).contiguous()


def random_inside_boxes(rng, n, h, w, lo=6, hi=200):
    hi = min(hi, h - 1, w - 1)
    out = []
    while len(out) < n:
        bw, bh = np.exp(rng.uniform(np.log(lo), np.log(hi), 2))
        x1, y1 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        if x1 >= 0 and y1 >= 0:
            out.append([x1, y1, x1 + bw, y1 + bh])
    return torch.tensor(out, dtype=torch.float32)


# --------------------------------------------------------------------------- references


def test_enlarging_matches_cv2_bilinear_reference():
    img = smooth_image()
    x1, y1, x2, y2 = 40.3, 30.6, 72.1, 54.9  # 31.8 x 24.3 -> 79 x 79, pure enlargement
    s = 79
    # OpenCV reference on the full image: output pixel u samples x1 + (u + 0.5) * w / S (pixel i
    # covers [i, i + 1)), bilinearly, neighbours outside the box included.
    def bilinear(x1, y1, x2, y2):
        sx, sy = (x2 - x1) / s, (y2 - y1) / s
        m = np.array([[sx, 0, x1 - 0.5 + 0.5 * sx], [0, sy, y1 - 0.5 + 0.5 * sy]])
        out = cv2.warpAffine(img.astype(np.float32) / 255, m, (s, s), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
        return torch.from_numpy(out).permute(2, 0, 1)

    ref = bilinear(x1, y1, x2, y2)
    box = torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32)
    roi = extract_crops(chw(img), box, s, backend="roi_align")[0]
    assert torch.allclose(roi, ref, atol=1e-3)  # OpenCV quantises coordinates to 1/32 px
    # The cv2 backend resizes the whole-pixel box [40, 31, 72, 55] alone: the same up to that
    # rounding and the edge ring, where it repeats the box's edge pixels instead of reading on.
    fast = extract_crops(chw(img), box, s, backend="cv2")[0]
    assert (fast - bilinear(40, 31, 72, 55))[:, 2:-2, 2:-2].abs().max() <= 1.5 / 255
    assert (fast - ref).abs().mean() < CV2_TOLERANCE / 2


@pytest.mark.parametrize("factor", [2, 4])
def test_shrinking_by_integer_factor_is_block_average(factor):
    img = smooth_image(seed=1)
    s = 20
    x0, y0 = 13, 9
    region = img[y0 : y0 + s * factor, x0 : x0 + s * factor].astype(np.float64) / 255
    ref = region.reshape(s, factor, s, factor, 3).mean(axis=(1, 3))  # exact area average
    ref = torch.from_numpy(ref).permute(2, 0, 1).float()
    box = torch.tensor([[x0, y0, x0 + s * factor, y0 + s * factor]], dtype=torch.float32)
    roi = extract_crops(chw(img), box, s, backend="roi_align")[0]
    assert torch.allclose(roi, ref, atol=1e-5)
    fast = extract_crops(chw(img), box, s, backend="cv2")[0]
    assert (fast - ref).abs().max() <= 2.5 / 255


@pytest.mark.parametrize("size", [32, 79])
@pytest.mark.parametrize("mode", ["square", "letterbox"])
@pytest.mark.parametrize("context", [0.0, 0.25])
def test_backends_agree_within_stated_tolerance(size, mode, context):
    img = smooth_image(seed=2)
    rng = np.random.default_rng(size)
    # Inside the image even after the context margin, so only the interior behaviour is compared.
    boxes = random_inside_boxes(rng, 60, 240 - 80, 320 - 80, hi=140) + 40
    a = extract_crops(chw(img), boxes, size, context=context, mode=mode, backend="cv2")
    b = extract_crops(chw(img), boxes, size, context=context, mode=mode, backend="roi_align")
    per_crop = (a - b).abs().flatten(1).mean(1)
    assert per_crop.max() < CV2_TOLERANCE, per_crop.max()
    assert (a - b).abs().mean() < CV2_TOLERANCE / 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_antialiasing_removes_aliasing_of_fine_stripes(backend):
    img = np.zeros((64, 256, 3), np.uint8)
    img[:, ::2] = 255  # 1 px stripes: a point sampler aliases them when shrinking ~15x
    box = torch.tensor([[0, 0, 250, 64]], dtype=torch.float32)
    aa = extract_crops(chw(img), box, 16, backend=backend)[0]
    raw = extract_crops(chw(img), box, 16, backend=backend, antialias=False)[0]
    assert abs(aa.mean().item() - 0.5) < 0.02 and aa.std() < 0.02
    assert raw.std() > 0.2 or abs(raw.mean().item() - 0.5) > 0.2


# --------------------------------------------------------------------------- geometry


@pytest.mark.parametrize("backend", BACKENDS)
def test_context_margin_and_box_placement(backend):
    img = np.zeros((200, 300, 3), np.uint8)
    img[60:100, 100:180] = (255, 128, 0)  # an 80 x 40 bright rectangle
    box = torch.tensor([[100, 60, 180, 100]], dtype=torch.float32)
    tight = extract_crops(chw(img), box, 40, backend=backend)[0]
    assert torch.allclose(tight[:, 2:-2, 2:-2].mean((1, 2)), torch.tensor([1.0, 128 / 255, 0.0]), atol=0.01)
    wide = extract_crops(chw(img), box, 40, context=0.5, backend=backend)[0]
    # The rectangle now fills the central half in each axis: rows/cols 10..30 of 40.
    assert wide[0, 12:28, 12:28].min() > 0.95
    assert wide[0, :8].max() < 0.05 and wide[0, :, -8:].max() < 0.05
    assert abs(wide[0].mean().item() - 0.25) < 0.03


@pytest.mark.parametrize("backend", BACKENDS)
def test_letterbox_keeps_aspect_with_zero_bars(backend):
    img = np.full((200, 300, 3), 200, np.uint8)
    box = torch.tensor([[50, 80, 250, 130]], dtype=torch.float32)  # 200 x 50, aspect 4:1
    crop = extract_crops(chw(img), box, 40, mode="letterbox", backend=backend)[0]
    rows = crop[0].mean(1)
    assert torch.all(rows[:14] == 0) and torch.all(rows[-14:] == 0)  # bars: 15 rows each side
    assert torch.allclose(rows[16:24], torch.full((8,), 200 / 255), atol=0.01)
    square = extract_crops(chw(img), box, 40, mode="square", backend=backend)[0]
    assert square.min() > 0.75  # stretched: no bars


@pytest.mark.parametrize("backend", BACKENDS)
def test_partly_outside_box_is_zero_padded(backend):
    img = np.full((100, 100, 3), 200, np.uint8)
    boxes = torch.tensor([[-50, 0, 50, 100], [60, 60, 140, 140]], dtype=torch.float32)
    crops = extract_crops(chw(img), boxes, 20, backend=backend)
    left = crops[0, 0]
    assert left[:, :9].max() < 0.02 and torch.allclose(left[:, 11:], torch.full((20, 9), 200 / 255), atol=0.01)
    corner = crops[1, 0]
    assert torch.allclose(corner[:9, :9], torch.full((9, 9), 200 / 255), atol=0.01)
    assert corner[11:, :].max() < 0.02 and corner[:, 11:].max() < 0.02


@pytest.mark.parametrize("backend", BACKENDS)
def test_invalid_boxes_give_zero_crops_and_are_reported(backend):
    img = np.full((50, 60, 3), 100, np.uint8)
    nan, inf = float("nan"), float("inf")
    boxes = torch.tensor(
        [
            [10, 10, 20, 20],  # valid
            [nan, 1, 5, 5],  # non-finite
            [0, 0, inf, 10],  # non-finite
            [20, 10, 10, 20],  # x2 < x1: invalid, not swapped
            [100, 10, 120, 20],  # wholly outside
            [-30, -30, -1, -1],  # wholly outside
            [25, 25, 25, 25],  # zero area inside: 1 px minimum, valid
            [60, 50, 60, 50],  # a point on the far corner: half a pixel overlaps, valid
        ],
        dtype=torch.float32,
    )
    expect = torch.tensor([True, False, False, False, False, False, True, True])
    assert torch.equal(valid_boxes_mask(boxes, (50, 60)), expect)
    crops = extract_crops(chw(img), boxes, 8, backend=backend)
    assert torch.isfinite(crops).all()
    assert torch.all(crops[~expect] == 0)
    assert torch.allclose(crops[0], torch.full((3, 8, 8), 100 / 255), atol=1e-3)
    assert torch.allclose(crops[6], torch.full((3, 8, 8), 100 / 255), atol=1e-3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_absurd_boxes_are_bounded(backend):
    img = smooth_image(60, 80)
    boxes = torch.tensor([[-1e9, -1e9, 1e9, 1e9], [10, 10, 3e7, 20]], dtype=torch.float32)
    crops = extract_crops(chw(img), boxes, 16, backend=backend)
    assert crops.shape == (2, 3, 16, 16) and torch.isfinite(crops).all()
    sample, _, valid = crop_boxes(boxes, (60, 80))
    assert valid.all() and np.all(sample[:, [0, 2]] >= -80) and np.all(sample[:, [0, 2]] <= 160)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_box_set(backend):
    for boxes in (torch.zeros((0, 4)), [], np.zeros((0, 4), np.float32)):
        out = extract_crops(chw(smooth_image(20, 20)), boxes, 13, backend=backend)
        assert out.shape == (0, 3, 13, 13) and out.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", ["square", "letterbox"])
def test_chunking_is_exactly_equivalent(backend, mode):
    img = smooth_image(seed=3)
    boxes = random_inside_boxes(np.random.default_rng(4), 23, 240, 320)
    boxes[5] = torch.tensor([float("nan"), 0, 1, 1])
    whole = extract_crops(chw(img), boxes, 24, context=0.1, mode=mode, backend=backend)
    chunked = extract_crops(chw(img), boxes, 24, context=0.1, mode=mode, backend=backend, chunk_size=4)
    assert torch.equal(whole, chunked)


@pytest.mark.parametrize("backend", BACKENDS)
def test_thousands_of_boxes_in_chunks(backend):
    img = smooth_image(seed=4)
    boxes = random_inside_boxes(np.random.default_rng(9), 3000, 240, 320, lo=2, hi=60)
    a = extract_crops(chw(img), boxes, 8, backend=backend, chunk_size=256)
    assert a.shape == (3000, 3, 8, 8)
    assert torch.equal(a[::97], extract_crops(chw(img), boxes[::97], 8, backend=backend))


def test_uint8_and_float_inputs_agree():
    img = smooth_image(seed=5)
    boxes = random_inside_boxes(np.random.default_rng(5), 20, 240, 320)
    u8 = chw(img)
    f32 = u8.float() / 255
    assert torch.allclose(
        extract_crops(u8, boxes, 32, backend="roi_align"), extract_crops(f32, boxes, 32, backend="roi_align"), atol=1e-6
    )
    cu8 = extract_crops(u8, boxes, 32, backend="cv2")
    cf32 = extract_crops(f32, boxes, 32, backend="cv2")
    assert cu8.dtype == cf32.dtype == torch.float32
    assert (cu8 - cf32).abs().max() <= 2.5 / 255
    # Float input keeps its value range and dtype.
    f64 = extract_crops(u8.double(), boxes, 32, backend="cv2")
    assert f64.dtype == torch.float64 and 100 < f64.max() <= 255


def test_memory_layouts_and_numpy_input_give_identical_crops():
    img = smooth_image(seed=6)
    boxes = random_inside_boxes(np.random.default_rng(6), 15, 240, 320)
    ref = extract_crops(chw(img), boxes, 20, backend="cv2")
    view = torch.from_numpy(img).permute(2, 0, 1)  # HWC memory, as from cv2.imread
    assert torch.equal(extract_crops(view, boxes, 20), ref)
    assert torch.equal(extract_crops(img, boxes.numpy(), 20), ref)
    hwc = extract_crops_hwc(img, boxes, 20)
    assert hwc.dtype == np.uint8 and hwc.shape == (15, 20, 20, 3)
    assert torch.equal(torch.from_numpy(hwc).permute(0, 3, 1, 2).float() / 255, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_equals_per_image(backend):
    rng = np.random.default_rng(7)
    imgs = [smooth_image(120, 160, 1), smooth_image(90, 100, 2), smooth_image(120, 160, 3), smooth_image(50, 50, 4)]
    boxes = [random_inside_boxes(rng, 4, 120, 160), random_inside_boxes(rng, 3, 90, 100), torch.zeros((0, 4)),
             random_inside_boxes(rng, 2, 50, 50)]
    imgs_t = [chw(i) for i in imgs]
    batch = extract_crops_batch(imgs_t, boxes, 16, context=0.1, mode="letterbox", backend=backend)
    single = torch.cat([extract_crops(i, b, 16, context=0.1, mode="letterbox", backend=backend) for i, b in zip(imgs_t, boxes)])
    assert batch.shape == (9, 3, 16, 16)
    assert torch.allclose(batch, single, atol=1e-6)
    assert extract_crops_batch([], [], 16).shape == (0, 3, 16, 16)


def test_bad_inputs_raise_clear_errors():
    img = chw(smooth_image(20, 20))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        extract_crops(img, torch.zeros(3, 5), 8)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        extract_crops(img[0], torch.zeros(1, 4), 8)
    with pytest.raises(ValueError, match="mode"):
        extract_crops(img, torch.zeros(1, 4), 8, mode="stretch")
    with pytest.raises(ValueError, match="context"):
        extract_crops(img, torch.zeros(1, 4), 8, context=-0.1)
    with pytest.raises(ValueError, match="backend"):
        extract_crops(img, torch.zeros(1, 4), 8, backend="pil")
    with pytest.raises(ValueError, match="size"):
        extract_crops(img, torch.zeros(1, 4), 0)
    with pytest.raises(TypeError, match="dtype"):
        extract_crops(img.int(), torch.zeros(1, 4), 8)
    with pytest.raises(ValueError, match="box sets"):
        extract_crops_batch([img], [], 8)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_roi_align():
    img = smooth_image(seed=8)
    boxes = random_inside_boxes(np.random.default_rng(8), 40, 240, 320)
    boxes[3] = torch.tensor([float("nan"), 0, 1, 1])
    cpu = extract_crops(chw(img), boxes, 32, context=0.1, mode="letterbox", backend="roi_align")
    gpu = extract_crops(chw(img).cuda(), boxes.cuda(), 32, context=0.1, mode="letterbox")
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5)
    batch = extract_crops_batch([chw(img).cuda()] * 2, [boxes, boxes[:5]], 32, context=0.1, mode="letterbox")
    assert torch.allclose(batch.cpu(), torch.cat([cpu, cpu[:5]]), atol=1e-5)


# --------------------------------------------------------------------------- properties

coord = st.one_of(
    st.floats(-100, 200, allow_nan=False, width=32),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 0.0, 1e7, -1e7]),
)
IMG = chw(smooth_image(48, 64, 9))


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    boxes=st.lists(st.tuples(coord, coord, coord, coord), min_size=0, max_size=6),
    size=st.integers(1, 24),
    context=st.sampled_from([0.0, 0.1, 0.5]),
    mode=st.sampled_from(["square", "letterbox"]),
)
def test_any_boxes_give_bounded_crops(boxes, size, context, mode):
    b = torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    valid = valid_boxes_mask(b, (48, 64))
    for backend in BACKENDS:
        out = extract_crops(IMG, b, size, context=context, mode=mode, backend=backend)
        assert out.shape == (len(boxes), 3, size, size)
        assert torch.isfinite(out).all() and torch.all(out >= 0) and torch.all(out <= 1 + 1e-6)
        assert torch.all(out[~valid] == 0)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(
    x=st.floats(0, 40), y=st.floats(0, 28), w=st.floats(4, 24), h=st.floats(4, 20), size=st.sampled_from([8, 16, 31])
)
def test_backends_agree_on_any_inside_box(x, y, w, h, size):
    b = torch.tensor([[x, y, x + w, y + h]], dtype=torch.float32)
    a = extract_crops(IMG, b, size, backend="cv2")
    r = extract_crops(IMG, b, size, backend="roi_align")
    assert (a - r).abs().mean() < CV2_TOLERANCE
    assert math.isclose(a.mean().item(), r.mean().item(), abs_tol=CV2_TOLERANCE)
