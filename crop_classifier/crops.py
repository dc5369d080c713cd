"""Boxes -> fixed-size classifier crops: the one crop step that training and inference share.

Geometry (both backends):

1. A box is *invalid* when a coordinate is non-finite, when ``x2 < x1`` or ``y2 < y1`` (never
   swapped: an inverted box is an upstream bug, not a detection), or when it does not overlap the
   image. Invalid boxes give an all-zero crop and ``valid_boxes_mask`` reports them.
2. ``context`` widens the box by that fraction of its width/height on each side
   (``x1 - c*w, x2 + c*w``); then each side is at least 1 px (grown about the centre).
3. ``mode="square"`` stretches that box to ``size x size``. ``mode="letterbox"`` keeps the aspect
   ratio: it samples the square of side ``max(w, h)`` about the box centre and zeroes the output
   rows/columns whose centres fall outside the box (zero bars, like the out-of-image padding).
4. Pixels outside the image read as zero (``roi_align``'s padding). Coordinates further than one
   image size beyond a border are clamped there, which only affects absurd boxes and keeps the
   cost bounded.
5. Sampling is ``torchvision.ops.roi_align(aligned=True, sampling_ratio=-1)``: pixel ``i`` covers
   ``[i, i+1)``, output pixel ``u`` averages ``ceil(w/size)`` bilinear samples per axis over its
   bin, so shrinking is anti-aliased. This is the GPU path (one call over all boxes).

The CPU path (``backend="cv2"``, the ``"auto"`` choice on CPU) resizes only the uint8 box
regions with OpenCV and converts just the crops to float; converting a whole 1280x720 image to
float and running ``roi_align`` on CPU costs 40-60 ms for 100 boxes, this path 2-3 ms. It
rounds the box edges to whole pixels (at most half a source pixel of shift) and anti-aliases
mipmap style (2x pixel averaging while the box is >= 2x the output, then bilinear), so it gives
the same crops as roi_align within ``CV2_TOLERANCE`` for boxes inside the image; where a box
crosses the image border the two differ in a band of about one source pixel there (roi_align
repeats the edge pixel half a pixel outward).

``antialias=False`` takes one bilinear sample per output pixel on both backends
(``sampling_ratio=1`` / plain ``INTER_LINEAR``): faster for boxes much larger than the output,
but aliased. Training and inference should use the same setting (and the same context/mode).
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple, Union

import cv2
import numpy as np
import torch
from torchvision.ops import roi_align

from .structures import CROP_MODES, DEFAULT_CONTEXT, context_extent

__all__ = [
    "BACKENDS",
    "CROP_MODES",
    "CV2_TOLERANCE",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CONTEXT",
    "extract_crops",
    "extract_crops_batch",
    "extract_crops_hwc",
    "crop_boxes",
    "valid_boxes_mask",
]

# The crop defaults live with ``structures.CropSpec`` (one home); a checkpoint's ``meta["crop"]`` records the
# values it was trained with and inference uses those.
BACKENDS = ("auto", "cv2", "roi_align")
#: Boxes per roi_align call / per float conversion; bounds the temporary memory.
DEFAULT_CHUNK_SIZE = 256
#: How closely the cv2 backend follows roi_align for boxes inside the image, on smooth content:
#: mean absolute difference per crop in [0, 1] intensity units. Single pixels at sharp edges can
#: differ more (half a source pixel of shift); tests/test_crops.py holds the backends to this.
CV2_TOLERANCE = 0.02

ImageLike = Union[torch.Tensor, np.ndarray]


# ----------------------------------------------------------------------------- geometry


def _as_box_tensor(boxes, device=None) -> torch.Tensor:
    b = torch.as_tensor(boxes)
    if b.numel() == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4] (XYXY pixels), got {tuple(b.shape)}")
    if b.dtype not in (torch.float32, torch.float64):
        b = b.to(torch.float32)
    return b if device is None else b.to(device)


def _as_box_array(boxes) -> np.ndarray:
    """Boxes as float64 numpy ``[N, 4]``: the geometry is cheap numpy on the host, for any device."""
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().cpu().numpy()
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        b = b.reshape(0, 4)
    if b.ndim != 2 or b.shape[1] != 4:
        raise ValueError(f"boxes must have shape [N, 4] (XYXY pixels), got {b.shape}")
    return b


def _valid_np(b: np.ndarray, image_size: Tuple[int, int]) -> np.ndarray:
    h, w = float(image_size[0]), float(image_size[1])
    finite = np.isfinite(b).all(axis=1)
    x1, y1, x2, y2 = np.where(finite[:, None], b, 0.0).T
    ordered = (x2 >= x1) & (y2 >= y1)
    # Grow to the 1 px minimum about the centre before testing the overlap.
    gx = np.maximum(1.0 - (x2 - x1), 0) / 2
    gy = np.maximum(1.0 - (y2 - y1), 0) / 2
    overlap = (x1 - gx < w) & (x2 + gx > 0) & (y1 - gy < h) & (y2 + gy > 0)
    return finite & ordered & overlap


def valid_boxes_mask(boxes, image_size: Tuple[int, int]) -> torch.Tensor:
    """Bool ``[N]``: finite, ordered (``x2 >= x1``, ``y2 >= y1``) and overlapping the image.

    ``image_size`` is ``(H, W)``. Zero-area boxes count as 1 px (the crop minimum), so a point on
    the image is valid. ``extract_crops`` returns all-zero crops where this is False. On the
    boxes' device when they are a tensor.
    """
    mask = torch.from_numpy(_valid_np(_as_box_array(boxes), image_size))
    return mask.to(boxes.device) if isinstance(boxes, torch.Tensor) else mask


def crop_boxes(
    boxes, image_size: Tuple[int, int], *, context: float = 0.0, mode: str = "square"
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The regions that ``extract_crops`` samples, as numpy: ``(sample, content, valid)``.

    ``sample`` ``[N, 4]`` float64 maps onto the whole ``size x size`` output (context, 1 px
    minimum, letterbox square and clamp applied; invalid boxes replaced by a harmless 1 px box).
    ``content`` is the part whose pixels are kept (differs from ``sample`` only in letterbox
    mode). ``valid`` is ``valid_boxes_mask``. Also useful to draw what a classifier saw.
    """
    _check_mode(mode)
    _check_context(context)
    b = _as_box_array(boxes)
    valid = _valid_np(b, image_size)
    b = np.where(valid[:, None], b, np.array([0.0, 0.0, 1.0, 1.0]))
    h, w = float(image_size[0]), float(image_size[1])
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    bw = np.maximum(context_extent(b[:, 2] - b[:, 0], context), 1.0)
    bh = np.maximum(context_extent(b[:, 3] - b[:, 1], context), 1.0)
    content = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    if mode == "letterbox":
        bw = bh = np.maximum(bw, bh)
    sample = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    sample = np.clip(sample, [-w, -h, -w, -h], [2 * w, 2 * h, 2 * w, 2 * h])
    # Clamping can collapse a box that lies entirely beyond the margin; keep it >= 1 px.
    sample[:, 2] = np.maximum(sample[:, 2], sample[:, 0] + 1)
    sample[:, 3] = np.maximum(sample[:, 3], sample[:, 1] + 1)
    return sample, content, valid


def _letterbox_keep(sample: np.ndarray, content: np.ndarray, size: int) -> np.ndarray:
    """Bool ``[N, S, S]``: output pixels whose centre lies inside the content box."""
    u = (np.arange(size) + 0.5) / size
    xs = sample[:, 0:1] + u[None] * (sample[:, 2:3] - sample[:, 0:1])
    ys = sample[:, 1:2] + u[None] * (sample[:, 3:4] - sample[:, 1:2])
    cols = (xs >= content[:, 0:1]) & (xs <= content[:, 2:3])
    rows = (ys >= content[:, 1:2]) & (ys <= content[:, 3:4])
    return rows[:, :, None] & cols[:, None, :]


def _check_mode(mode: str) -> None:
    if mode not in CROP_MODES:
        raise ValueError(f"mode must be one of {CROP_MODES}, got {mode!r}")


def _check_context(context: float) -> None:
    if not (isinstance(context, (int, float)) and math.isfinite(context) and context >= 0):
        raise ValueError(f"context must be a finite number >= 0, got {context!r}")


def _check_size(size: int) -> int:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    return int(size)


# ----------------------------------------------------------------------------- images


def _image_hw(image: ImageLike) -> Tuple[int, int]:
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"numpy images must be HxWx3 RGB, got shape {image.shape}")
        return int(image.shape[0]), int(image.shape[1])
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor [3, H, W] or numpy HxWx3, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image tensors must be [3, H, W] RGB, got shape {tuple(image.shape)}")
    return int(image.shape[1]), int(image.shape[2])


def _check_dtype(image: ImageLike) -> None:
    ok = image.dtype == torch.uint8 or image.is_floating_point() if isinstance(image, torch.Tensor) else (
        image.dtype == np.uint8 or np.issubdtype(image.dtype, np.floating)
    )
    if not ok:
        raise TypeError(f"image dtype must be uint8 or floating point, got {image.dtype}")


def _out_dtype(image: ImageLike) -> torch.dtype:
    if isinstance(image, np.ndarray):
        return torch.float32 if image.dtype == np.uint8 else torch.from_numpy(image[:0, :0]).dtype
    return torch.float32 if image.dtype == torch.uint8 else image.dtype


def _device(image: ImageLike) -> torch.device:
    return image.device if isinstance(image, torch.Tensor) else torch.device("cpu")


def _as_hwc_numpy(image: ImageLike) -> np.ndarray:
    """HxWx3 numpy array of a CPU image; a view when the memory is already HWC-interleaved."""
    if isinstance(image, np.ndarray):
        arr = image
    else:
        if image.device.type != "cpu":
            raise ValueError("the cv2 backend needs a CPU image; use backend='roi_align' (or 'auto') on GPU")
        t = image.detach()
        if t.dtype not in (torch.uint8, torch.float32, torch.float64):
            t = t.float()
        if t.is_contiguous():
            # Planar CHW: one interleaving pass (cv2.merge, ~0.1 ms at 720p) beats copying every
            # strided box region.
            p = t.numpy()
            arr = cv2.merge([p[0], p[1], p[2]])
        else:
            arr = t.permute(1, 2, 0).numpy()
    if arr.dtype not in (np.uint8, np.float32, np.float64):
        arr = arr.astype(np.float32)
    return arr


def _as_chw_float(image: ImageLike, device=None) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(image)).permute(2, 0, 1) if isinstance(image, np.ndarray) else image
    if device is not None:
        t = t.to(device)
    if t.dtype == torch.uint8:
        return t.float().div_(255)
    if t.device.type == "cpu" and t.dtype not in (torch.float32, torch.float64):
        return t.float()  # CPU half kernels are slow; compute in float32
    return t


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "cv2" if device.type == "cpu" else "roi_align"
    if backend == "cv2" and device.type != "cpu":
        raise ValueError("backend='cv2' needs a CPU image; use 'roi_align' or 'auto'")
    return backend


# ----------------------------------------------------------------------------- cv2 backend


def _cv2_fill(img: np.ndarray, sample: np.ndarray, skip: np.ndarray, size: int, antialias: bool, stage) -> None:
    """Resize each sample box of ``img`` (HWC) into ``stage[i]`` (``[n, S, S, 3]``)."""
    H, W = img.shape[:2]
    # Whole-pixel box edges: round half up, at least 1 px.
    e = np.floor(sample + 0.5).astype(np.int64)
    e[:, 2] = np.maximum(e[:, 2], e[:, 0] + 1)
    e[:, 3] = np.maximum(e[:, 3], e[:, 1] + 1)
    wc, hc = e[:, 2] - e[:, 0], e[:, 3] - e[:, 1]
    # Anti-aliasing, mipmap style: when an axis shrinks by >= 2, average blocks of k pixels along
    # it (k the largest power of two <= the ratio, by repeated halving), then resize bilinearly
    # with the box's exact scale passed as fx/fy, so the geometry stays the box's. The block grid
    # starts at the box's first pixel and may read < k pixels past its far edge; only the first
    # S output pixels are kept.
    if antialias:
        kx = 2 ** np.floor(np.log2(np.maximum(wc / size, 1.0))).astype(np.int64)
        ky = 2 ** np.floor(np.log2(np.maximum(hc / size, 1.0))).astype(np.int64)
    else:
        kx = ky = np.ones(len(e), dtype=np.int64)
    e[:, 2], e[:, 3] = e[:, 0] + kx * -(-wc // kx), e[:, 1] + ky * -(-hc // ky)
    dsize = (size, size)
    linear = cv2.INTER_LINEAR
    rows = zip(e.tolist(), kx.tolist(), ky.tolist(), wc.tolist(), hc.tolist(), skip.tolist())
    for j, ((c0, r0, c1, r1), fx, fy, w, h, sk) in enumerate(rows):
        dst = stage[j]
        cc0, rr0, cc1, rr1 = max(c0, 0), max(r0, 0), min(c1, W), min(r1, H)
        if sk or cc0 >= cc1 or rr0 >= rr1:
            dst[...] = 0
            continue
        region = img[rr0:rr1, cc0:cc1]
        if cc0 != c0 or rr0 != r0 or cc1 != c1 or rr1 != r1:
            # The box's own pixels outside the image read as zero (roi_align's padding); the block-grid
            # extension past the box's far edge repeats the edge instead, so a box inside the image
            # never averages in zeros from beyond the image border.
            zr, zb = max(c0 + w - W, 0), max(r0 + h - H, 0)
            region = cv2.copyMakeBorder(
                np.ascontiguousarray(region), rr0 - r0, zb, cc0 - c0, zr, cv2.BORDER_CONSTANT, value=0
            )
            if c1 - cc1 > zr or r1 - rr1 > zb:
                region = cv2.copyMakeBorder(region, 0, r1 - rr1 - zb, 0, c1 - cc1 - zr, cv2.BORDER_REPLICATE)
        if fx == 1 and fy == 1:
            cv2.resize(region, dsize, dst=dst, interpolation=linear)
            continue
        ax, ay = fx, fy
        while ax > 1 or ay > 1:
            # An exact 2x bilinear downscale averages pixel pairs (2x2 blocks when both axes
            # halve: OpenCV's SIMD INTER_AREA path); one-axis INTER_AREA is 4x slower.
            hh, ww = region.shape[:2]
            region = cv2.resize(region, (ww // 2 if ax > 1 else ww, hh // 2 if ay > 1 else hh), interpolation=linear)
            ax, ay = max(ax // 2, 1), max(ay // 2, 1)
        # dsize=None: OpenCV then maps with exactly these factors; the result is S or S+1 wide.
        dst[...] = cv2.resize(region, None, fx=size * fx / w, fy=size * fy / h, interpolation=linear)[:size, :size]


def _cv2_chunk(img, sample, content, valid, mode, size, antialias, stage) -> np.ndarray:
    n = len(sample)
    st = stage[:n]
    _cv2_fill(img, sample, ~valid, size, antialias, st)
    if mode == "letterbox":
        st *= _letterbox_keep(sample, content, size)[..., None].astype(st.dtype)
    return st


def extract_crops_hwc(
    image: ImageLike, boxes, size: int, *, context: float = 0.0, mode: str = "square", antialias: bool = True
) -> np.ndarray:
    """CPU crops as numpy ``[N, S, S, 3]`` in the image's dtype (uint8 stays uint8).

    Exactly the ``backend="cv2"`` crops of ``extract_crops`` before the float conversion; for
    augmentation pipelines (albumentations) that work on uint8 HWC arrays.
    """
    size = _check_size(size)
    _check_dtype(image)
    hw = _image_hw(image)
    img = _as_hwc_numpy(image)
    sample, content, valid = crop_boxes(boxes, hw, context=context, mode=mode)
    out = np.empty((len(sample), size, size, 3), dtype=img.dtype)
    if len(sample):
        _cv2_chunk(img, sample, content, valid, mode, size, antialias, out)
    return out


def _cv2_into(img, geometry, mode, size, antialias, chunk_size, out: torch.Tensor) -> None:
    """Fill ``out`` ``[N, 3, S, S]`` float chunk by chunk through reused HWC and planar buffers.
    ``geometry``: ``crop_boxes``' (sample, content, valid)."""
    sample, content, valid = geometry
    n = len(sample)
    m = min(chunk_size, n)
    stage = np.empty((m, size, size, 3), dtype=img.dtype)
    # Split each chunk into preallocated planes, then convert plane by plane into the NCHW
    # output: contiguous copies, about 4x faster than a strided NHWC -> NCHW conversion. NumPy,
    # not torch: torch's intra-op thread pool stalls for milliseconds on a busy machine.
    dst = out.numpy()
    planes = [np.empty((m * size, size), dtype=img.dtype) for _ in range(3)]
    for s in range(0, n, chunk_size):
        e = min(s + chunk_size, n)
        k = e - s
        st = _cv2_chunk(img, sample[s:e], content[s:e], valid[s:e], mode, size, antialias, stage)
        pl = planes if k == m else [p[: k * size] for p in planes]
        cv2.split(st.reshape(k * size, size, 3), pl)
        for c in range(3):
            src = pl[c].reshape(k, size, size)
            if img.dtype == np.uint8:
                np.divide(src, np.float32(255), out=dst[s:e, c])
            else:
                np.copyto(dst[s:e, c], src, casting="same_kind")


# ----------------------------------------------------------------------------- roi_align backend


def _roi_into(images_f, rois, size: int, antialias: bool, chunk_size: int, out: torch.Tensor) -> None:
    # sampling_ratio=-1: ceil(box/size) samples per bin and axis (anti-aliased); 1: one bilinear
    # sample per output pixel, the same as cv2 INTER_LINEAR.
    ratio = -1 if antialias else 1
    for s in range(0, len(rois), chunk_size):
        e = min(s + chunk_size, len(rois))
        out[s:e] = roi_align(images_f, rois[s:e], output_size=size, spatial_scale=1.0, sampling_ratio=ratio, aligned=True)


def _finish_roi(out, sample, content, valid, mode, size) -> None:
    if mode == "letterbox":
        keep = torch.from_numpy(_letterbox_keep(sample, content, size)).to(out.device)
        out.mul_(keep[:, None].to(out.dtype))
    if not valid.all():
        out[torch.from_numpy(~valid).to(out.device)] = 0


def _numpy_backed(n: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised ``[n, 3, S, S]`` CPU tensor on NumPy memory (float32 for bfloat16)."""
    np_dtype = np.float32 if dtype == torch.bfloat16 else torch.empty(0, dtype=dtype).numpy().dtype
    return torch.from_numpy(np.empty((n, 3, size, size), dtype=np_dtype))


def _rois(sample: np.ndarray, batch_index: np.ndarray, dtype, device) -> torch.Tensor:
    rois = np.concatenate([batch_index[:, None].astype(np.float64), sample], axis=1)
    return torch.from_numpy(rois).to(device=device, dtype=dtype)


# ----------------------------------------------------------------------------- public API


def extract_crops(
    image: ImageLike,
    boxes,
    size: int,
    *,
    context: float = 0.0,
    mode: str = "square",
    backend: str = "auto",
    antialias: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Crops ``[N, 3, size, size]`` of ``boxes`` (``[N, 4]`` XYXY pixels) from one full-res image.

    ``image``: tensor ``[3, H, W]`` RGB, uint8 or float (a numpy ``HxWx3`` RGB array is accepted
    too). Output: float32 in [0, 1] for uint8 input, else the image's float dtype and value range;
    on the image's device. ``backend``: ``"auto"`` (cv2 on CPU, roi_align elsewhere), ``"cv2"``
    or ``"roi_align"``. ``antialias=False`` takes one bilinear sample per output pixel (faster
    when shrinking large boxes, aliased). ``chunk_size`` bounds the boxes processed at once.
    See the module docstring for the geometry, invalid boxes and the backends' tolerance.
    """
    size = _check_size(size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    _check_dtype(image)
    hw = _image_hw(image)
    device = _device(image)
    backend = _resolve_backend(backend, device)
    sample, content, valid = crop_boxes(boxes, hw, context=context, mode=mode)
    out = torch.empty((len(sample), 3, size, size), dtype=_out_dtype(image), device=device)
    if len(sample) == 0:
        return out
    if backend == "cv2":
        # NumPy allocates large arrays on huge pages: first-touching them is ~5x cheaper than a
        # fresh torch.empty (60 ms vs 10 ms for 1000 crops of 79 px). NumPy has no bfloat16.
        arr = _numpy_backed(len(sample), size, out.dtype)
        _cv2_into(_as_hwc_numpy(image), (sample, content, valid), mode, size, antialias, chunk_size, arr)
        return arr.to(out.dtype)
    img_f = _as_chw_float(image, device)
    rois = _rois(sample, np.zeros(len(sample)), img_f.dtype, device)
    res = out if img_f.dtype == out.dtype else torch.empty_like(out, dtype=img_f.dtype)
    _roi_into(img_f[None], rois, size, antialias, chunk_size, res)
    _finish_roi(res, sample, content, valid, mode, size)
    if res is not out:
        out.copy_(res)
    return out


def extract_crops_batch(
    images: Sequence[ImageLike],
    boxes: Sequence,
    size: int,
    *,
    context: float = 0.0,
    mode: str = "square",
    backend: str = "auto",
    antialias: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> torch.Tensor:
    """Crops of several images, concatenated in order: ``[sum N_i, 3, size, size]``.

    On the roi_align path all images of one size go through one ``roi_align`` call (one call in
    total when the images share a size); the cv2 path loops over images. Same crops as calling
    ``extract_crops`` per image.
    """
    size = _check_size(size)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    images, boxes = list(images), list(boxes)
    if len(images) != len(boxes):
        raise ValueError(f"got {len(images)} images but {len(boxes)} box sets")
    if not images:
        return torch.empty((0, 3, size, size))
    for im in images:
        _check_dtype(im)
        _image_hw(im)
    devices = {_device(im) for im in images}
    dtypes = {_out_dtype(im) for im in images}
    if len(devices) > 1 or len(dtypes) > 1:
        raise ValueError(f"images must share one device and output dtype, got {devices} / {dtypes}")
    device, dtype = devices.pop(), dtypes.pop()
    geometry = [crop_boxes(bx, _image_hw(im), context=context, mode=mode) for im, bx in zip(images, boxes)]
    if _resolve_backend(backend, device) == "cv2":
        arr = _numpy_backed(sum(len(g[0]) for g in geometry), size, dtype)
        start = 0
        for im, geo in zip(images, geometry):
            if len(geo[0]):
                _cv2_into(_as_hwc_numpy(im), geo, mode, size, antialias, chunk_size, arr[start:start + len(geo[0])])
                start += len(geo[0])
        return arr.to(dtype)
    return _roi_batch(images, geometry, mode, size, antialias, chunk_size, (device, dtype))


def _roi_batch(images, geometry, mode: str, size: int, antialias: bool, chunk_size: int, where) -> torch.Tensor:
    """``extract_crops_batch`` on the roi_align path: one call per distinct image size."""
    device, dtype = where
    counts = [len(g[0]) for g in geometry]
    starts = np.concatenate([[0], np.cumsum(counts)]).astype(int).tolist()
    out = torch.empty((starts[-1], 3, size, size), dtype=dtype, device=device)
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, im in enumerate(images):
        if counts[i]:
            groups.setdefault(_image_hw(im), []).append(i)
    for idx in groups.values():
        stack = torch.stack([_as_chw_float(images[i], device) for i in idx])
        sample, content, valid = (np.concatenate([geometry[i][k] for i in idx]) for k in range(3))
        bidx = np.repeat(np.arange(len(idx)), [counts[i] for i in idx])
        rois = _rois(sample, bidx, stack.dtype, device)
        res = torch.empty((len(rois), 3, size, size), dtype=stack.dtype, device=device)
        _roi_into(stack, rois, size, antialias, chunk_size, res)
        _finish_roi(res, sample, content, valid, mode, size)
        pos = 0
        for i in idx:
            out[starts[i] : starts[i + 1]] = res[pos : pos + counts[i]]
            pos += counts[i]
    return out
