"""Does inference leak? Resident memory (psutil RSS) over many images through the second stage.

Each image is a fresh synthetic frame (sizes cycle, so the allocator sees varying shapes) with a varying
number of boxes, run through ``crop_classifier.second_stage.SecondStage`` (crops from the full image, a small
classifier, fusion). RSS is sampled after a warm-up (allocator pools, oneDNN primitive caches and lazy
imports fill up first) and the growth from there to the end is the figure; a least-squares slope over all
samples (MB per 1000 images) separates a steady leak from one-off noise.
"""
from __future__ import annotations

import gc
import time
from typing import Callable, Dict, List

import numpy as np
import torch

from crop_classifier.crops import DEFAULT_CONTEXT
from crop_classifier.models import build_classifier
from crop_classifier.second_stage import SecondStage

from .crops import random_boxes

SIZES = ((640, 480), (800, 600), (512, 384), (1280, 720))


def run_memory(
    *,
    num_images: int = 1000,
    warmup: int = 50,
    sample_every: int = 50,
    arch: str = "v3_79",
    width: float = 0.0625,
    num_classes: int = 10,
    max_boxes: int = 12,
    device: str = "cpu",
    log: Callable[[str], None] = print,
) -> Dict[str, object]:
    import psutil

    if num_images < 1 or warmup < 0 or sample_every < 1:
        raise ValueError("num_images >= 1, warmup >= 0 and sample_every >= 1 are required")
    proc = psutil.Process()
    names = [f"class_{i}" for i in range(num_classes)]
    clf = build_classifier(arch, num_classes, width=width, aux_logits=False)
    meta = {"arch": arch, "class_names": names, "input_size": clf.input_size, "width": width}
    stage = SecondStage.from_model(clf, meta, names, device=device, context=DEFAULT_CONTEXT)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for w, h in SIZES]

    def rss_mb() -> float:
        gc.collect()
        return proc.memory_info().rss / 2**20

    samples: List[Dict[str, float]] = []
    boxes_total = 0
    t0 = time.perf_counter()
    start_rss = rss_mb()
    for i in range(warmup + num_images):
        frame = frames[i % len(frames)]
        # A fresh image per step: the frame with one random row band altered, so no two inputs are the same.
        image = torch.from_numpy(frame.copy()).permute(2, 0, 1)
        image[:, int(rng.integers(0, image.shape[1])), :] = int(i % 256)
        h, w = frame.shape[:2]
        n = int(rng.integers(0, max_boxes + 1))
        boxes = torch.from_numpy(random_boxes(n, w, h, seed=i))
        classes = torch.from_numpy(rng.integers(0, num_classes, n))
        scores = torch.from_numpy(rng.random(n).astype(np.float32))
        with torch.inference_mode():
            out = stage.run([image.to(device)], [boxes.to(device)], [classes.to(device)], [scores.to(device)]).detections
        assert len(out) == 1
        boxes_total += n
        done = i + 1 - warmup
        if done >= 0 and done % sample_every == 0:
            samples.append({"images": done, "rss_mb": rss_mb()})
        if done > 0 and done % max(1, num_images // 4) == 0:
            log(f"  memory: {done}/{num_images} images, RSS {samples[-1]['rss_mb'] if samples else rss_mb():.1f} MB")
    if samples[-1]["images"] != num_images:
        samples.append({"images": num_images, "rss_mb": rss_mb()})
    xs = np.array([s["images"] for s in samples], dtype=float)
    ys = np.array([s["rss_mb"] for s in samples], dtype=float)
    slope = float(np.polyfit(xs, ys, 1)[0] * 1000) if len(xs) >= 2 and np.ptp(xs) > 0 else 0.0
    growth = float(ys[-1] - ys[0])
    return {
        "device": device, "images": num_images, "warmup_images": warmup, "boxes": boxes_total,
        "classifier": f"{arch} width {width}, {num_classes} classes (build_inference_classifier)",
        "start_rss_mb": start_rss, "rss_after_warmup_mb": float(ys[0]), "rss_end_mb": float(ys[-1]),
        "rss_peak_mb": float(ys.max()), "growth_mb": growth, "slope_mb_per_1000_images": slope,
        "seconds": time.perf_counter() - t0, "samples": samples,
    }
