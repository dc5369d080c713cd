"""Cost of size-adaptive routing: crops/s of the routed classifier at a realistic box-size mix against each
fixed variant (the goal: >= 0.9x ``v3_79``, ``targets``).

The mix: native object sides drawn from COCO's distribution: the COCO128 annotations' boxes when given
(``coco_annotations``; their longer sides, non-crowd), else a log-normal with median 55 px and a sixth
above 150 px (COCO's figures). Each crop's route is ``Routes().assign`` of its side widened by the default
context margin, as the second stage routes it. The same number of crops goes through every contender in
batches of ``batch``: a fixed variant takes all of them at its input size, the routed classifier (one
weight set, ``RoutedClassifier``: BN folded once, one view per route) takes each route's crops at that
route's size, batched per route. Contenders run interleaved in rounds (``timing.time_interleaved``);
crops/s from the median round, ratios as medians of per-round ratios. Crop extraction is not timed (it
is the same ROIAlign for every contender, at a different output size).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from crop_classifier.coco_io import load_coco
from crop_classifier.crops import DEFAULT_CONTEXT
from crop_classifier.models import build_classifier, create_classifier, model_meta
from crop_classifier.models.inception_v3 import STEMS
from crop_classifier.models.inference import build_inference_classifier
from crop_classifier.models.routing import ROUTED_ARCH, Routes, native_sides

from .models import count_gmacs
from .timing import paired_ratio, time_interleaved

FIXED = ("v3_79", "v3_151", "v3_299")
LOGNORMAL_MEDIAN = 55.0
#: sigma such that P(side > 150 px) = 1/6: ln(150 / 55) / z(5/6), z(5/6) = 0.9674.
LOGNORMAL_SIGMA = math.log(150.0 / LOGNORMAL_MEDIAN) / 0.9674


def coco_box_sides(ann_file: Path) -> Optional[np.ndarray]:
    """Longer sides (px) of the non-crowd boxes of a COCO file, or None when the file is absent."""
    if not Path(ann_file).is_file():
        return None
    coco = load_coco(ann_file)
    sides = [np.maximum(a.xywh[:, 2], a.xywh[:, 3]) for a in
             (coco.annotations(im["id"], include_crowd=False) for im in coco.images) if len(a)]
    sides = np.concatenate(sides) if sides else np.zeros(0)
    return sides[sides >= 1] if len(sides) else None


def realistic_sides(n: int, rng: np.random.Generator, ann_file: Optional[Path] = None) -> Tuple[np.ndarray, str]:
    """``n`` object sides (px, box's longer side) drawn from the boxes of ``ann_file`` (COCO128's
    annotations), else (no file given or found) from the log-normal; and a description of the source."""
    pool = coco_box_sides(ann_file) if ann_file is not None else None
    if pool is not None and len(pool):
        return rng.choice(pool, size=n, replace=True), f"COCO128 box sides ({len(pool)} boxes, {ann_file})"
    sides = np.exp(rng.normal(math.log(LOGNORMAL_MEDIAN), LOGNORMAL_SIGMA, n))
    return sides, f"log-normal, median {LOGNORMAL_MEDIAN:g} px, sigma {LOGNORMAL_SIGMA:.3f} (a sixth over 150 px)"


def _batches(x: torch.Tensor, batch: int) -> List[torch.Tensor]:
    return [x[i:i + batch].contiguous() for i in range(0, len(x), batch)]


def _classifier(arch: str, num_classes: int, width: float, device: str):
    names = [f"c{i}" for i in range(num_classes)]
    if arch == ROUTED_ARCH:
        net = create_classifier(ROUTED_ARCH, num_classes, width=width, aux_logits=False)
        meta = model_meta(net, ROUTED_ARCH, names, routes=Routes(), context=DEFAULT_CONTEXT, mode="square")
    else:
        net = build_classifier(arch, num_classes, width=width, aux_logits=False)
        meta = model_meta(net, arch, names, context=DEFAULT_CONTEXT, mode="square")
    return net, build_inference_classifier(net.eval(), meta, device=device)


def _contenders(width: float, route_sizes: np.ndarray, *, num_classes: int, batch: int, device: str,
                seed: int) -> Tuple[Dict[str, Callable[[], object]], Dict[str, float]]:
    """{name: one pass over the workload} and {name: GMACs per crop} at one width."""
    g = torch.Generator().manual_seed(seed)
    n = len(route_sizes)
    fns, gmacs = {}, {}
    for arch in FIXED:
        net, clf = _classifier(arch, num_classes, width, device)
        s = STEMS[arch].input_size
        xs = _batches(torch.rand(n, 3, s, s, generator=g).to(device), batch)
        fns[arch] = lambda clf=clf, xs=xs: [clf(x) for x in xs]
        gmacs[arch] = count_gmacs(net, s)
    net, clf = _classifier(ROUTED_ARCH, num_classes, width, device)
    per_route = [xb for s in sorted(set(route_sizes.tolist()))
                 for xb in _batches(torch.rand(int((route_sizes == s).sum()), 3, s, s, generator=g).to(device), batch)]
    fns["routed (auto)"] = lambda clf=clf, xs=per_route: [clf(x) for x in xs]
    gmacs["routed (auto)"] = float(np.mean([count_gmacs(net.route(int(s)), int(s)) for s in route_sizes]))
    return fns, gmacs


def run_routing(*, device: str = "cpu", widths: Sequence[float] = (1.0, 0.125), num_crops: int = 256,
                batch: int = 32, rounds: int = 5, warmup: int = 1, num_classes: int = 80, seed: int = 0,
                coco_annotations: Optional[Path] = None, log: Callable[[str], None] = print) -> Dict[str, object]:
    """``coco_annotations``: the COCO file whose box sides make the workload (default: the log-normal)."""
    routes = Routes()
    rng = np.random.default_rng(seed)
    sides, source = realistic_sides(num_crops, rng, coco_annotations)
    route_sizes = routes.sizes_for(native_sides(np.stack([np.zeros_like(sides), np.zeros_like(sides), sides, sides], 1),
                                                DEFAULT_CONTEXT))
    shares = {a: float(np.mean(route_sizes == s)) for a, s in zip(routes.archs, routes.input_sizes)}
    log(f"  routing: {num_crops} crops, sides from {source}; route shares "
        + ", ".join(f"{a} {100 * v:.1f} %" for a, v in shares.items()))
    rows: List[Dict[str, object]] = []
    for width in widths:
        fns, gmacs = _contenders(width, route_sizes, num_classes=num_classes, batch=batch, device=device, seed=seed)
        with torch.inference_mode():
            timings = time_interleaved(fns, rounds=rounds, warmup=warmup, device=device)
        for name, t in timings.items():
            rows.append({"width": width, "model": name, "crops_per_s": num_crops / t.median, "median_s": t.median,
                         "gmacs_per_crop": gmacs[name], "rounds": t.n,
                         "ratio_vs_v3_79": paired_ratio(timings["v3_79"], t)})
            log(f"    width {width:g} {name:14s} {num_crops / t.median:8.1f} crops/s "
                f"(x{rows[-1]['ratio_vs_v3_79']:.2f} v3_79)")
    return {"device": device, "batch": batch, "num_crops": num_crops, "rounds": rounds, "num_classes": num_classes,
            "threads": torch.get_num_threads(), "context": DEFAULT_CONTEXT, "routes": routes.describe(),
            "sides_source": source, "route_shares": shares,
            "sides": {"median": float(np.median(sides)), "under_32": float(np.mean(sides < 32)),
                      "over_150": float(np.mean(sides > 150))},
            "rows": rows}
