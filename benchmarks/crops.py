"""Crop extraction: our batched ``extract_crops`` against the per-box loop most second stages use.

The baseline is the pattern of YOLOv5's ``apply_classifier``: for each box, square it (longest side x1.3
+ 30 px), clip, slice the BGR image, ``cv2.resize``, flip to RGB, transpose to CHW, convert to float,
divide by 255; then stack the crops into a batch (with ``np.stack`` + ``torch.from_numpy``, the fast way to
stack, so the baseline is not handicapped by ``torch.Tensor(list)``) and move it to the device.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Sequence

import cv2
import numpy as np
import torch

from crop_classifier.crops import DEFAULT_CONTEXT, extract_crops

from .timing import paired_ratio, time_interleaved


def random_boxes(num: int, width: int, height: int, *, seed: int = 0, median_side: float = 55.0) -> np.ndarray:
    """``[num, 4]`` XYXY boxes inside the image with COCO-like sizes (log-normal side, median 55 px as in
    COCO128, aspect ratios between 1:2 and 2:1)."""
    rng = np.random.default_rng(seed)
    side = np.clip(rng.lognormal(np.log(median_side), 0.8, num), 4, min(width, height) * 0.9)
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), num))
    w = np.clip(side * np.sqrt(aspect), 2, width - 1)
    h = np.clip(side / np.sqrt(aspect), 2, height - 1)
    x1 = rng.uniform(0, width - w)
    y1 = rng.uniform(0, height - h)
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)


def random_image(width: int, height: int, *, seed: int = 0) -> np.ndarray:
    """A smooth-ish RGB uint8 ``HxWx3`` test image (content does not change the timings)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3), dtype=np.uint8)
    return np.ascontiguousarray(cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR))


def per_box_loop(image_bgr: np.ndarray, boxes: np.ndarray, size: int, device="cpu") -> torch.Tensor:
    """The common second-stage crop loop (YOLOv5 ``apply_classifier`` pattern), written out for comparison."""
    b = boxes.astype(np.float32).copy()
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    side = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]) * 1.3 + 30  # square, padded
    h, w = image_bgr.shape[:2]
    x1 = np.clip(cx - side / 2, 0, w).astype(int)
    y1 = np.clip(cy - side / 2, 0, h).astype(int)
    x2 = np.clip(cx + side / 2, 0, w).astype(int)
    y2 = np.clip(cy + side / 2, 0, h).astype(int)
    ims = []
    for a, b_, c, d in zip(x1, y1, x2, y2):
        cutout = image_bgr[b_:max(d, b_ + 1), a:max(c, a + 1)]
        im = cv2.resize(cutout, (size, size))
        im = im[:, :, ::-1].transpose(2, 0, 1)  # BGR -> RGB, HWC -> CHW
        im = np.ascontiguousarray(im, dtype=np.float32)
        im /= 255
        ims.append(im)
    if not ims:
        return torch.empty((0, 3, size, size), device=device)
    return torch.from_numpy(np.stack(ims)).to(device)


def run_crops(
    *,
    device: str = "cpu",
    box_counts: Sequence[int] = (1, 10, 100, 1000),
    sizes: Sequence[int] = (79, 224),
    image_wh=(1280, 720),
    rounds: int = 5,
    min_round_s: float = 0.2,
    max_output_mb: float = 256.0,
    log: Callable[[str], None] = print,
) -> Dict[str, object]:
    """Per (size, boxes): the loop vs ``extract_crops`` (default backend for the device, with and without
    anti-aliasing; on CPU also ``roi_align``), timed interleaved. ``speedup_X`` = loop time / X's time."""

    dev = torch.device(device)
    W, H = image_wh
    rgb = random_image(W, H)
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])  # what cv2.imread hands the loop
    # Our input is what a detector already holds: a CHW uint8 tensor on its device.
    chw = torch.from_numpy(rgb).permute(2, 0, 1).contiguous().to(dev)
    # "ours": the default call (anti-aliased when shrinking); "ours_no_antialias": one bilinear sample per
    # output pixel, the same sampling as the loop's cv2.resize; on CPU also the GPU path (roi_align) run there.
    variants = {"ours": dict(backend="auto"), "ours_no_antialias": dict(backend="auto", antialias=False)}
    if dev.type == "cpu":
        variants["roi_align"] = dict(backend="roi_align")
    rows: List[Dict[str, object]] = []
    for size in sizes:
        for n in box_counts:
            out_mb = n * 3 * size * size * 4 / 2**20
            if out_mb > max_output_mb:
                log(f"  crops: skip {n} boxes at {size} px ({out_mb:.0f} MB of crops > {max_output_mb:.0f} MB)")
                continue
            boxes = random_boxes(n, W, H, seed=n)
            tboxes = torch.from_numpy(boxes)
            fns = {"loop": lambda b=boxes, s=size: per_box_loop(bgr, b, s, dev)}
            for name, kw in variants.items():
                fns[name] = lambda b=tboxes, s=size, kw=kw: extract_crops(chw, b, s, context=DEFAULT_CONTEXT,
                                                                          mode="square", **kw)
            # Repeat fast calls within a round so each round is long enough to time reliably.
            probe = time_interleaved(fns, rounds=1, warmup=1, device=device)
            repeats = {k: max(1, min(200, int(min_round_s / max(t.median, 1e-6)))) for k, t in probe.items()}
            t = time_interleaved(fns, rounds=rounds, warmup=0, repeats=repeats, device=device)
            row: Dict[str, object] = {"size": size, "boxes": n, "device": device, "image": f"{W}x{H}"}
            for k, tk in t.items():
                row[f"{k}_ms"] = 1e3 * tk.median
                row[f"{k}_p95_ms"] = 1e3 * tk.p95
                if k != "loop":
                    row[f"speedup_{k}"] = paired_ratio(t["loop"], tk) if repeats[k] == repeats["loop"] \
                        else t["loop"].median / tk.median
            rows.append(row)
            log(f"  crops {n:5d} boxes @ {size}: loop {row['loop_ms']:.2f} ms, ours {row['ours_ms']:.2f} ms "
                f"(x{row['speedup_ours']:.2f}), no antialias {row['ours_no_antialias_ms']:.2f} ms "
                f"(x{row['speedup_ours_no_antialias']:.2f})")
    return {"device": device, "image": f"{W}x{H}", "context": DEFAULT_CONTEXT, "mode": "square",
            "variants": {k: str(v) for k, v in variants.items()},
            "baseline": "per-box loop: square x1.3+30 px, cv2.resize, BGR->RGB, CHW, float/255, np.stack",
            "rows": rows}
