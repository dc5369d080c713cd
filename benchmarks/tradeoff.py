"""The paper's Table 2 redone for detector crops: accuracy vs cost of the three stems, plus two baselines.

Every model is trained with the same recipe, data, epochs and batch size, at one stated width, from scratch
or (``init``) from one shared checkpoint whose weights load into every row (the stems share every parameter,
so ImageNet or any crop classifier of that width starts each row alike; a head of another class count is
re-initialised), and evaluated on held-out crops (top-1/top-5):

* ``v3_79``, ``v3_151``, ``v3_299``: the Section 9 stems, each fed crops at its own input size;
* ``v3_299 upsampled``: v3_299 fed the *same* 79 px crops bilinearly upsampled to 299 (the usual way to
  put a small object through a 299 px network: the cost of 299, the information of 79);
* ``v3_299 stem @79``: the unmodified 299 stem fed 79 px crops directly (Section 9's "just shrink it"
  network, with its much lower cost);
* ``routed (auto)``: one shared weight set behind the three stems (``create_classifier("auto")``), each
  training crop fed at the input size its native side routes to (``models.routing.Routes``; redrawn per
  epoch with ``ROUTE_JITTER`` of them at a neighbouring route: ``engine.data.RoutedTensorCropDataset`` and
  ``data.sampler.RoutedBatchSampler``), each test crop evaluated at its route (``RoutedClassifier``). Same
  data, epochs, batch, width and recipe; its sampler drops ``routes - 1`` batches per epoch (one per route
  boundary), so it takes 2 fewer steps per epoch than the fixed rows. Its GMACs are the test crops' mix.

Datasets: ``synthetic`` (the default scenes: objects of 16-160 px on 512 px images), ``synthetic_wide``
(``WIDE_SCENES``: objects of 10-320 px on 1280 px images, their mark period capped at 4 px so that large
objects carry detail a 79 px crop cannot hold; see ``data/synthetic.py``) and ``coco128``. Every row reports
top-1 per native object size bucket (``SIZE_BUCKETS``: the box's longer side in pixels of the image, without
the context margin) with the crop count and standard error of each, and the routed row is compared with the
best fixed row per bucket and overall (``routing_goal``).

Training runs through the engine's loop (``crop_classifier.engine.Trainer`` given ``TrainingParts``:
RMSProp and linear LR scaling, the staircase schedule, label-smoothed loss, gradient clipping, AMP on GPU,
metrics), with the settings of ``RECIPES``: the paper's, or by default the CPU configs' overrides for short
runs (``configs/cpu/``), over crops extracted once into memory (``crop_classifier.crops.extract_crops`` on
the ground-truth boxes, the default context; ``engine.data.TensorCropDataset``: random horizontal flips and
the training normalisation). Keeping the crops in memory rather than decoding and augmenting each epoch is
what lets ten trainings fit in a few minutes of two CPU cores; the auxiliary head is off for all models,
because at 79 px the unmodified 299 stem's 17x17 grid is 3x3, too small for it. Each run's config and
metrics go to ``WORK_DIR/runs/DATASET/MODEL``. Before evaluation the BN statistics are recomputed
(``torch.optim.swa_utils.update_bn``); evaluation runs the classifier's inference form
(``models.inference.build_inference_classifier``).
"""
from __future__ import annotations

import itertools
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

from crop_classifier.coco_io import load_coco
from crop_classifier.config import get_cfg
from crop_classifier.crops import DEFAULT_CONTEXT, extract_crops
from crop_classifier.data.images import read_rgb
from crop_classifier.data.negatives import random_negative_boxes
from crop_classifier.data.synthetic import generate_scenes
from crop_classifier.engine import Trainer, TrainingParts
from crop_classifier.engine.data import RoutedTensorCropDataset, TensorCropDataset
from crop_classifier.engine.evaluation import SIZE_BUCKETS as EVAL_SIZE_BUCKETS, compute_metrics
from crop_classifier.models import build_classifier, create_classifier, model_meta
from crop_classifier.models.inference import build_inference_classifier
from crop_classifier.models.routing import ROUTED_ARCH, Routes, native_sides
from crop_classifier.models.weights import load_pretrained
from crop_classifier.structures import BACKGROUND_CLASS

from .models import count_gmacs

DATASETS = ("synthetic", "synthetic_wide", "coco128")
#: The wide-range scenes (``generate_scenes`` arguments): 10-320 px objects need 1280 px images (objects are
#: at most 0.3 of the image); the 4 px mark period makes the marks of objects above 60 px finer than their size.
WIDE_SCENES = dict(image_size=1280, object_sizes=(10.0, 320.0), mark_period_cap=4.0)
#: Native object size buckets (the box's longer side, px, without context): (low, high, label), the
#: evaluation's (``engine.evaluation.SIZE_BUCKETS``, what ``tools/evaluate.py`` reports).
SIZE_BUCKETS: Tuple[Tuple[float, float, str], ...] = tuple(
    (float(lo), float(hi), name) for name, lo, hi in EVAL_SIZE_BUCKETS)
ROUTED_NAME = "routed (auto)"
ROUTE_JITTER = 0.2
#: With a background class: a random background box overlaps every object less than this (the training's
#: INPUT.BACKGROUND_MAX_IOU default).
NEGATIVE_MAX_IOU = 0.3

# (name, architecture, crop size (None: every route's), size the crop is upsampled to before the network or None)
MODELS: Tuple[Tuple[str, str, Optional[int], Optional[int]], ...] = (
    ("v3_79", "v3_79", 79, None),
    ("v3_151", "v3_151", 151, None),
    ("v3_299", "v3_299", 299, None),
    ("v3_299 upsampled", "v3_299", 79, 299),
    ("v3_299 stem @79", "v3_299", 79, None),
    (ROUTED_NAME, ROUTED_ARCH, None, None),
)


class Upsampled(nn.Module):
    """Bilinear upsampling to ``size`` in front of a classifier (the 'feed it a bigger image' baseline)."""

    def __init__(self, model: nn.Module, size: int) -> None:
        super().__init__()
        self.model = model
        self.size = size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False))


# ------------------------------------------------------------------------------------------------ data
def coco_records(ann_file: Path, image_dir: Path):
    """The boxed images of a COCO file, read through ``crop_classifier.coco_io``.

    Args:
        ann_file: COCO instances JSON.
        image_dir: folder its ``file_name`` entries are relative to.

    Returns:
        ``([(image path, boxes XYXY float32 [N, 4], category ids [N])], {category id: name})``: images by id,
        non-crowd boxes of at least 1 px a side; images without such a box are left out.
    """
    coco = load_coco(ann_file)  # the package's one COCO reader: its id/category rules, parsed once
    if coco.errors:
        raise ValueError(coco.errors[0])
    records = []
    for info in sorted(coco.images, key=lambda im: im["id"]):
        anns = coco.annotations(info["id"], include_crowd=False)
        anns = anns.select((anns.xywh[:, 2] >= 1) & (anns.xywh[:, 3] >= 1))
        if len(anns):
            records.append((Path(image_dir) / info["file_name"], anns.boxes.astype(np.float32), anns.category_ids))
    return records, dict(zip(coco.category_ids, coco.class_names))


def _read_rgb(path: Path) -> np.ndarray:
    # the one reader (EXIF orientation, 16-bit, alpha, pixel limit): crops match training and inference
    return read_rgb(path)


def extract_all(records, sizes: Sequence[int], label_of: Dict[int, int], *, context: float,
                max_crops: int = 0, negatives: float = 0.0, negative_label: int = -1,
                seed: int = 0) -> Tuple[Dict[int, torch.Tensor], torch.Tensor, np.ndarray]:
    """uint8 crops ``{size: [N, 3, S, S]}`` of every box whose category is in ``label_of``, labels ``[N]`` and
    the boxes ``[N, 4]`` (XYXY, px of their image). ``negatives``: about that many background boxes per object
    as well (``data.negatives.random_negative_boxes``: IoU < ``NEGATIVE_MAX_IOU`` with every box of the image,
    at its objects' scales; seeded per image), labelled ``negative_label``."""
    crops: Dict[int, List[torch.Tensor]] = {s: [] for s in sizes}
    labels: List[int] = []
    kept: List[np.ndarray] = []
    carry = 0.0
    for i, (path, boxes, cats) in enumerate(records):
        keep = np.array([c in label_of for c in cats], dtype=bool)
        if max_crops:
            keep &= np.cumsum(keep) <= max_crops - len(labels)
        if not keep.any():
            continue
        image = torch.from_numpy(_read_rgb(path)).permute(2, 0, 1)
        carry += negatives * int(keep.sum())
        n_neg = int(carry)
        carry -= n_neg
        neg = random_negative_boxes(image.shape[1:], boxes, n_neg, NEGATIVE_MAX_IOU, np.random.default_rng([seed, i]))
        both = np.concatenate([boxes[keep], neg]).astype(np.float32)
        b = torch.from_numpy(both)
        for s in sizes:
            crops[s].append(extract_crops(image, b, s, context=context).mul_(255).round_().to(torch.uint8))
        labels.extend([label_of[c] for c in cats[keep]] + [negative_label] * n_neg)
        kept.append(both)
        if max_crops and len(labels) >= max_crops:
            break
    boxes_all = np.concatenate(kept).reshape(-1, 4) if kept else np.zeros((0, 4), np.float32)
    return {s: torch.cat(v) for s, v in crops.items()}, torch.tensor(labels, dtype=torch.long), boxes_all


def dataset_records(name: str, work_dir: Path, *, synthetic_train: int, synthetic_test: int, image_size: int,
                    coco_test_fraction: float, seed: int = 0, coco128: Optional[Path] = None):
    """The training and test images of one trade-off dataset.

    Args:
        name: one of ``DATASETS``.
        work_dir: where synthetic scenes are generated (reused when already there).
        synthetic_train, synthetic_test, image_size: the synthetic scenes' counts and side (px).
        coco_test_fraction: share of COCO128's boxed images held out (every k-th by id).
        seed: synthetic scene seed.
        coco128: the COCO128 folder (``annotations/instances_train2017.json``, ``images/``), needed by the
            ``coco128`` dataset only.

    Returns:
        ``(train records, test records, {category id: name})``, records as ``coco_records`` gives them.
    """
    if name in ("synthetic", "synthetic_wide"):
        wide = name == "synthetic_wide"
        scenes = dict(WIDE_SCENES) if wide else {"image_size": image_size}
        tr_dir, te_dir = work_dir / f"{name}_train_{synthetic_train}", work_dir / f"{name}_test_{synthetic_test}"
        tr_ann = generate_scenes(tr_dir, synthetic_train, seed=seed + 1, split_name="train", **scenes)
        te_ann = generate_scenes(te_dir, synthetic_test, seed=seed + 2, split_name="test", **scenes)
        train, cats = coco_records(Path(tr_ann), tr_dir)
        test, _ = coco_records(Path(te_ann), te_dir)
        return train, test, cats
    if name == "coco128":
        if coco128 is None:
            raise ValueError("the coco128 trade-off dataset needs its folder (coco128=DIR)")
        ann = Path(coco128) / "annotations" / "instances_train2017.json"
        if not ann.is_file():
            raise FileNotFoundError(f"coco128 annotations not found at {ann}")
        records, cats = coco_records(ann, Path(coco128) / "images")
        # Held-out images, not just held-out boxes: every k-th image (by id) is a test image.
        k = max(2, int(round(1 / coco_test_fraction)))
        test = [r for i, r in enumerate(records) if i % k == k - 1]
        train = [r for i, r in enumerate(records) if i % k != k - 1]
        return train, test, cats
    raise ValueError(f"unknown trade-off dataset {name!r}; valid: {', '.join(DATASETS)}")


# ------------------------------------------------------------------------------------------------ training
#: Solver settings on top of the engine's defaults (the paper's). "cpu" is what configs/cpu/*.yaml set for runs
#: of a few thousand steps: with the paper's eps 1.0, gradient clipping at 2.0 (the norm starts far above it,
#: from the stem) shrinks every step and short runs stay at chance (docs/training.md).
RECIPES: Dict[str, Dict[str, float]] = {
    "paper": {},
    "cpu": {"RMSPROP_EPS": 1e-8, "BASE_LR": 1e-4, "LR_DECAY_EPOCHS": 0.25, "WARMUP_EPOCHS": 0.25},
}


def recipe_cfg(batch_size: int, epochs: int, base_lr: Optional[float], recipe: str = "cpu"):
    """The engine config of a trade-off training.

    Args:
        batch_size: ``SOLVER.IMS_PER_BATCH``.
        epochs: ``SOLVER.MAX_EPOCHS``.
        base_lr: ``SOLVER.BASE_LR``, or None for the recipe's.
        recipe: a key of ``RECIPES`` (solver settings over the engine's defaults).

    Returns:
        A ``crop_classifier.config`` CfgNode.
    """
    if recipe not in RECIPES:
        raise ValueError(f"unknown trade-off recipe {recipe!r}; valid: {', '.join(RECIPES)}")
    cfg = get_cfg()
    for key, value in RECIPES[recipe].items():
        setattr(cfg.SOLVER, key, value)
    cfg.SOLVER.IMS_PER_BATCH = batch_size
    cfg.SOLVER.MAX_EPOCHS = epochs
    if base_lr is not None:
        cfg.SOLVER.BASE_LR = base_lr
    return cfg


#: Training batches whose train-mode statistics replace the BN running averages before evaluation.
CALIBRATION_BATCHES = 20


@dataclass
class TrainSettings:
    """One trade-off training: epochs, batch (clamped to the training set), recipe, seed and device."""

    epochs: int
    batch_size: int
    seed: int = 0
    base_lr: Optional[float] = None
    device: str = "cpu"
    recipe: str = "cpu"
    init: Optional[str] = None  # checkpoint every row starts from (None: from scratch)


def _trainer_cfg(settings: TrainSettings, batch_size: int, meta: Dict[str, object], output_dir: Path):
    cfg = recipe_cfg(batch_size, settings.epochs, settings.base_lr, settings.recipe)
    cfg.MODEL.ARCH, cfg.MODEL.WIDTH, cfg.MODEL.AUX_LOGITS = meta["arch"], meta["width"], False
    cfg.DATALOADER.NUM_WORKERS = 0  # the crops are in memory: workers would only copy them
    cfg.SEED, cfg.OUTPUT_DIR = settings.seed, str(output_dir)
    if "ROUTE_JITTER" in cfg.INPUT:  # the routed row's training routes (the engine reads the jitter here)
        cfg.INPUT.ROUTE_JITTER = ROUTE_JITTER
    return cfg


@dataclass
class HeldOut:
    """Held-out crops: ``x`` uint8 ``[N, 3, S, S]``, or ``{size: crops}`` with ``sizes`` (``[N]``, each crop's
    input size: its route's) for a routed classifier; labels ``y``; ``object_sides`` (``[N]``, px: the box's
    longer side without context) for top-1 per size bucket."""

    x: Union[torch.Tensor, Dict[int, torch.Tensor]]
    y: torch.Tensor
    object_sides: Optional[np.ndarray] = None
    sizes: Optional[np.ndarray] = None


def held_out_probs(classifier, held: HeldOut, batch: int = 64) -> torch.Tensor:
    """Class probabilities of the held-out crops, each crop at its route's size for a routed classifier.

    Args:
        classifier: crops in [0, 1] ``[B, 3, S, S]`` -> probabilities ``[B, C]``; ``class_names`` of length C.
        held: the crops (uint8) and, for a routed classifier, each crop's size.
        batch: crops per call.

    Returns:
        ``[N, C]`` float probabilities on the CPU, in the order of ``held.y``.
    """
    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([classifier(x[i:i + batch].float().div_(255)).cpu() for i in range(0, len(x), batch)])

    if held.sizes is None:
        return run(held.x)
    probs = torch.zeros(len(held.y), len(classifier.class_names))
    for size in np.unique(held.sizes):
        idx = torch.from_numpy(np.flatnonzero(held.sizes == size))
        probs[idx] = run(held.x[int(size)][idx])
    return probs


def bucket_top1(correct: np.ndarray, object_sides: np.ndarray) -> Dict[str, Dict[str, Optional[float]]]:
    """``{bucket label: {"top1", "n", "se"}}`` over ``SIZE_BUCKETS`` and ``"all"``; ``se`` is the binomial
    standard error sqrt(p (1 - p) / n); an empty bucket has ``top1``/``se`` None."""
    correct, sides = np.asarray(correct, dtype=bool), np.asarray(object_sides, dtype=np.float64)
    out: Dict[str, Dict[str, Optional[float]]] = {}
    for lo, hi, label in SIZE_BUCKETS + ((0.0, float("inf"), "all"),):
        c = correct[(sides >= lo) & (sides < hi)]
        p = float(c.mean()) if len(c) else None
        out[label] = {"top1": p, "n": int(len(c)), "se": None if p is None else math.sqrt(p * (1 - p) / len(c))}
    return out


def train_and_evaluate(model: nn.Module, meta: Dict[str, object], train, test, settings: TrainSettings,
                       output_dir: Path) -> Dict[str, object]:
    """Trains ``model`` through the engine's ``Trainer`` on uint8 crops ``train = (x, y)`` (flips, the
    training normalisation) or a prebuilt dataset (``RoutedTensorCropDataset`` for a routed model, whose meta
    lists its routes), recomputes its BN statistics, then top-1/top-5 of its inference form on ``test``
    (``(x, y)`` or ``HeldOut``; per size bucket when it has ``object_sides``). ``output_dir`` gets the run's
    config and metrics (emptied first)."""
    shutil.rmtree(output_dir, ignore_errors=True)  # the metrics file is appended to
    dataset = TensorCropDataset(*train) if isinstance(train, tuple) else train
    routed = meta.get("routes") is not None
    # A routed sampler needs a full batch per route boundary besides the ones it keeps (tiny sets only).
    batch = min(settings.batch_size, len(dataset) // (len(meta["routes"]["archs"]) if routed else 1))
    cfg = _trainer_cfg(settings, max(1, batch), meta, output_dir)
    parts = TrainingParts(model, meta, dataset, device=torch.device(settings.device))
    trainer = Trainer(cfg, progress=False, parts=parts)
    try:
        epochs = [trainer.train_one_epoch(e) for e in range(settings.epochs)]
    finally:
        trainer.metrics.close()
    # After a few hundred steps the BN running averages still carry their initial values (0.9^10 is 0.35),
    # so a short run is evaluated with the statistics of its final weights instead; long runs are unaffected.
    # A routed model's are those of its training mix of routes (one BN set serves every route).
    update_bn(itertools.islice(trainer.train_loader, CALIBRATION_BATCHES), trainer.module, device=trainer.device)
    classifier = build_inference_classifier(trainer.module, meta, device=trainer.device)
    held = test if isinstance(test, HeldOut) else HeldOut(*test)
    probs = held_out_probs(classifier, held)
    metrics = compute_metrics(probs, held.y, meta["class_names"])
    out = {"top1": metrics["top1"], "top5": metrics["top5"], "top5_k": metrics["top5_k"],
           "mean_class_accuracy": metrics["mean_class_accuracy"], "train_s": sum(e["time_s"] for e in epochs),
           "steps": settings.epochs * trainer.iters_per_epoch, "final_loss": epochs[-1]["loss"],
           "lr": epochs[-1]["lr"], "batch_size": cfg.SOLVER.IMS_PER_BATCH}
    pred = probs.argmax(1)
    objects = np.ones(len(held.y), dtype=bool)
    if meta.get("background_class"):  # the last class: per-bucket figures are the objects', as without it
        bg = len(meta["class_names"]) - 1
        objects = (held.y != bg).numpy()
        out["top1_objects"] = float((pred == held.y).numpy()[objects].mean()) if objects.any() else None
        out["background"] = {
            "crops": int((~objects).sum()),
            "recall": float((pred[~objects] == bg).float().mean()) if (~objects).any() else None,
            "objects_called_background": float((pred[objects] == bg).float().mean()) if objects.any() else None}
    if held.object_sides is not None:
        out["buckets"] = bucket_top1((pred == held.y).numpy()[objects], held.object_sides[objects])
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def routing_goal(rows: List[Dict[str, object]]) -> Dict[str, object]:
    """The routing goal on one dataset's rows: the routed row >= the best fixed row in every bucket (each
    bucket's best) and >= 2 points above the best fixed row overall. Differences in points."""
    routed = next((r for r in rows if r["arch"] == ROUTED_ARCH and "buckets" in r), None)
    fixed = [r for r in rows if r["arch"] != ROUTED_ARCH and "buckets" in r]
    if routed is None or not fixed:
        return {}
    out: Dict[str, object] = {"buckets": {}}
    for _, _, label in SIZE_BUCKETS + ((0, 0, "all"),):
        if routed["buckets"][label]["top1"] is None:
            continue
        best = max(fixed, key=lambda r: r["buckets"][label]["top1"])
        b = best["buckets"][label]
        out["buckets"][label] = {"routed": routed["buckets"][label]["top1"], "best": b["top1"], "best_row": best["name"],
                                 "diff_points": 100 * (routed["buckets"][label]["top1"] - b["top1"]),
                                 "n": b["n"], "se_points": 100 * math.hypot(b["se"], routed["buckets"][label]["se"])}
    diffs = [v["diff_points"] for k, v in out["buckets"].items() if k != "all"]
    overall = out["buckets"].get("all", {}).get("diff_points")
    out["worst_bucket_diff_points"] = min(diffs) if diffs else None
    out["overall_diff_points"] = overall
    out["met"] = bool(diffs) and min(diffs) >= 0 and overall is not None and overall >= 2.0
    return out


def row_model(arch: str, crop: Optional[int], up: Optional[int], num_classes: int, width: float,
              class_names: List[str], init: Optional[str] = None):
    """The network of one trade-off row (an entry of ``MODELS``).

    Args:
        arch: the row's architecture (a stem name or ``auto``).
        crop: the crop side (px) the row reads; None for the routed row.
        up: side the crop is upsampled to before the network, or None.
        num_classes, width, class_names: the classifier's.
        init: a checkpoint whose weights every row starts from (a head of another class count stays as
            initialised); None: random weights.

    Returns:
        ``(trained module, module whose cost is counted, checkpoint meta)``.
    """
    if arch == ROUTED_ARCH:
        routes = Routes(jitter=ROUTE_JITTER)
        net = create_classifier(ROUTED_ARCH, num_classes, width=width, aux_logits=False, routes=routes.archs)
        if init:
            load_pretrained(net, init, arch=arch, any_stem=True)
        meta = model_meta(net, ROUTED_ARCH, class_names, routes=routes, context=DEFAULT_CONTEXT, mode="square")
        return net, net, _with_background(meta)
    net = build_classifier(arch, num_classes, width=width, aux_logits=False)
    if init:
        load_pretrained(net, init, arch=arch, any_stem=True)
    model = Upsampled(net, up) if up else net
    meta = model_meta(net, arch, class_names, context=DEFAULT_CONTEXT, mode="square")
    meta.update(input_size=crop, **({"upsampled_to": up} if up else {}))
    return model, net, _with_background(meta)


def _with_background(meta: Dict[str, object]) -> Dict[str, object]:
    if list(meta["class_names"])[-1:] == [BACKGROUND_CLASS]:  # as the trainer records MODEL.BACKGROUND_CLASS
        meta["background_class"] = BACKGROUND_CLASS
    return meta


@dataclass
class _Split:
    crops: Dict[int, torch.Tensor]
    y: torch.Tensor
    boxes: np.ndarray

    @property
    def object_sides(self) -> np.ndarray:
        return native_sides(self.boxes, 0.0)

    @property
    def route_sides(self) -> np.ndarray:
        return native_sides(self.boxes, DEFAULT_CONTEXT)


def _run_row(spec, train: _Split, test: _Split, class_names: List[str], width: float, settings: TrainSettings,
             run_dir: Path) -> Dict[str, object]:
    name, arch, crop, up = spec
    torch.manual_seed(settings.seed)  # the same initial weights for every model of one architecture
    model, net, meta = row_model(arch, crop, up, len(class_names), width, class_names, init=settings.init)
    if arch == ROUTED_ARCH:
        routes = Routes.from_meta(meta)
        sizes = routes.sizes_for(test.route_sides)
        gmacs = float(np.mean([count_gmacs(net.route(int(s)).eval(), int(s)) for s in sizes])) if len(sizes) else 0.0
        train_data = RoutedTensorCropDataset({s: train.crops[s] for s in routes.input_sizes}, train.y,
                                             train.route_sides)
        held = HeldOut(test.crops, test.y, test.object_sides, sizes)
        shares = {a: float(np.mean(sizes == s)) for a, s in zip(routes.archs, routes.input_sizes)}
        extra = {"crop": None, "input": "routed " + "/".join(map(str, routes.input_sizes)), "test_route_shares": shares,
                 "routes": routes.describe()}
    else:
        gmacs = count_gmacs(model.eval(), crop)
        train_data = (train.crops[crop], train.y)
        held = HeldOut(test.crops[crop], test.y, test.object_sides)
        extra = {"crop": crop, "input": f"{crop}" + (f"→{up}" if up else "")}
    r = train_and_evaluate(model, meta, train_data, held, settings, run_dir)
    return {"name": name, "arch": arch, **extra, "width": width, "gmacs": gmacs,
            "params": sum(p.numel() for p in net.parameters()), "train_crops": len(train.y),
            "test_crops": len(test.y), **r}


def _pct(p: Optional[float]) -> str:
    return "-" if p is None else f"{100 * p:.1f}"


def _bucket_counts(object_sides: np.ndarray) -> Dict[str, int]:
    return {label: int(((object_sides >= lo) & (object_sides < hi)).sum()) for lo, hi, label in SIZE_BUCKETS}


def run_tradeoff(
    *,
    device: str = "cpu",
    work_dir: Path = Path("output/benchmark/work/tradeoff_data"),
    datasets: Sequence[str] = ("synthetic", "coco128"),
    width: float = 0.125,
    epochs: int = 4,
    batch_size: int = 32,
    base_lr: Optional[float] = None,
    recipe: str = "cpu",
    init: Optional[str] = None,
    background: float = 0.0,
    synthetic_train: int = 120,
    synthetic_test: int = 40,
    image_size: int = 512,
    coco_test_fraction: float = 0.25,
    max_train_crops: int = 0,
    models: Sequence[str] = tuple(m[0] for m in MODELS),
    seed: int = 0,
    coco128: Optional[Path] = None,
    log: Callable[[str], None] = print,
) -> Dict[str, object]:
    unknown = [m for m in models if m not in {x[0] for x in MODELS}]
    if unknown:
        raise ValueError(f"unknown trade-off model(s) {unknown}; valid: {', '.join(m[0] for m in MODELS)}")
    specs = [m for m in MODELS if m[0] in models]
    settings = TrainSettings(epochs, batch_size, seed=seed, base_lr=base_lr, device=device, recipe=recipe,
                             init=str(init) if init else None)
    rows: List[Dict[str, object]] = []
    majority: Dict[str, float] = {}
    data_info: Dict[str, Dict[str, object]] = {}
    goals: Dict[str, Dict[str, object]] = {}
    for ds in datasets:
        train_rec, test_rec, cats = dataset_records(ds, Path(work_dir), synthetic_train=synthetic_train,
                                             synthetic_test=synthetic_test, image_size=image_size,
                                             coco_test_fraction=coco_test_fraction, seed=seed, coco128=coco128)
        # Classes: those with a training box (a test-only class could never be predicted).
        present = sorted({int(c) for _, _, cs in train_rec for c in cs})
        label_of = {c: i for i, c in enumerate(present)}
        # With a background class (the last class): ``background`` random background boxes per object, in
        # training and test crops; the per-bucket figures stay the objects'.
        class_names = [cats[c] for c in present] + ([BACKGROUND_CLASS] if background else [])
        neg = {"negatives": background, "negative_label": len(present)}
        sizes = sorted({s for _, _, s, _ in specs if s} | (set(Routes().input_sizes) if any(
            m[1] == ROUTED_ARCH for m in specs) else set()))
        t0 = time.perf_counter()
        train = _Split(*extract_all(train_rec, sizes, label_of, context=DEFAULT_CONTEXT, max_crops=max_train_crops,
                                    seed=seed, **neg))
        test = _Split(*extract_all(test_rec, sizes, label_of, context=DEFAULT_CONTEXT, seed=seed + 1, **neg))
        counts = torch.bincount(train.y, minlength=len(class_names))
        majority[ds] = float((test.y == counts.argmax()).float().mean())
        data_info[ds] = {"classes": len(class_names), "train_images": len(train_rec), "test_images": len(test_rec),
                         "train_crops": len(train.y), "test_crops": len(test.y),
                         "train_buckets": _bucket_counts(train.object_sides[(train.y != len(present)).numpy()]),
                         "test_buckets": _bucket_counts(test.object_sides[(test.y != len(present)).numpy()]),
                         "background_crops": {"train": int((train.y == len(present)).sum()),
                                              "test": int((test.y == len(present)).sum())},
                         "extract_s": time.perf_counter() - t0}
        log(f"  tradeoff {ds}: {len(class_names)} classes, {len(train.y)} train / {len(test.y)} test crops "
            f"(majority class {100 * majority[ds]:.1f} %; test crops per size bucket {data_info[ds]['test_buckets']})")
        ds_rows = []
        for spec in specs:
            row = {"dataset": ds, **_run_row(spec, train, test, class_names, width, settings,
                                             Path(work_dir) / "runs" / ds / _slug(spec[0]))}
            ds_rows.append(row)
            b = row["buckets"]
            by_size = ", ".join(f"{k} {_pct(v['top1'])}" for k, v in b.items() if k != "all")
            log(f"    {spec[0]:18s} {row['gmacs']:.3f} GMACs: top-1 {100 * row['top1']:.1f} %, top-5 "
                f"{100 * row['top5']:.1f} %; by size {by_size} ({row['steps']} steps, {row['train_s']:.0f} s, "
                f"final loss {row['final_loss']:.2f})")
        rows.extend(ds_rows)
        goals[ds] = routing_goal(ds_rows)
    return {"device": device, "width": width, "epochs": epochs, "batch_size": batch_size,
            "recipe": _recipe_text(settings, width), "recipe_name": recipe, "init": settings.init, "background": background, "datasets": data_info,
            "majority_top1": majority, "size_buckets": [b[2] for b in SIZE_BUCKETS], "routing_goal": goals,
            "rows": rows}


def _recipe_text(settings: TrainSettings, width: float) -> str:
    cfg = recipe_cfg(settings.batch_size, settings.epochs, settings.base_lr, settings.recipe)
    amp = f", AMP ({cfg.SOLVER.AMP_DTYPE})" if torch.device(settings.device).type == "cuda" and cfg.SOLVER.AMP else ""
    start = (f"every row starting from the weights of {settings.init} (seed {settings.seed} for a re-initialised head)"
             if settings.init else f"from scratch (random init, seed {settings.seed})")
    return (f"Width {width}, {settings.epochs} epochs, batch {settings.batch_size}, recipe '{settings.recipe}': "
            f"RMSProp (decay {cfg.SOLVER.RMSPROP_DECAY}, eps {cfg.SOLVER.RMSPROP_EPS}, momentum {cfg.SOLVER.MOMENTUM}), "
            f"lr {cfg.SOLVER.BASE_LR} x batch/{cfg.SOLVER.REFERENCE_BATCH_SIZE} decayed x{cfg.SOLVER.LR_DECAY} every "
            f"{cfg.SOLVER.LR_DECAY_EPOCHS} epochs after {cfg.SOLVER.WARMUP_EPOCHS} warm-up epochs, label smoothing "
            f"{cfg.SOLVER.LABEL_SMOOTHING}, gradient clipping {cfg.SOLVER.CLIP_GRAD_NORM}, "
            f"no auxiliary head, horizontal flips{amp}; trained by the engine's Trainer; crops of ground-truth "
            f"boxes with context {DEFAULT_CONTEXT}; {start}; the routed row "
            f"({ROUTED_NAME}) feeds each training crop at its route's size (route jitter {ROUTE_JITTER}) and each test "
            f"crop at its route; BN statistics recomputed (torch.optim.swa_utils.update_bn) on up to "
            f"{CALIBRATION_BATCHES} training batches before evaluation, which runs the inference form (BN folded).")
