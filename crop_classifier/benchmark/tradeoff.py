"""The paper's Table 2 redone for detector crops: accuracy vs cost of the three stems, plus two baselines.

Every model is trained from scratch with the same recipe, data, epochs and batch size, at one stated
width, and evaluated on held-out crops (top-1/top-5):

* ``v3_79``, ``v3_151``, ``v3_299``: the Section 9 stems, each fed crops at its own input size;
* ``v3_299 upsampled``: v3_299 fed the *same* 79 px crops bilinearly upsampled to 299 (the usual way to
  put a small object through a 299 px network: the cost of 299, the information of 79);
* ``v3_299 stem @79``: the unmodified 299 stem fed 79 px crops directly (Section 9's "just shrink it"
  network, with its much lower cost).

Training uses the engine's recipe pieces (``crop_classifier.engine``: RMSProp and linear LR scaling, the
staircase schedule, label-smoothed loss, gradient clipping, metrics), with the settings of ``RECIPES``: the
paper's, or by default the CPU configs' overrides for short runs (``configs/cpu/``), in a compact
loop over crops extracted once into memory (``crop_classifier.crops.extract_crops`` on the ground-truth
boxes, the default context), with random horizontal flips. Keeping the crops in memory rather than
decoding and augmenting each epoch is what lets ten trainings fit in a few minutes of two CPU cores; the
auxiliary head is off for all models, because at 79 px the unmodified 299 stem's 17x17 grid is 3x3,
too small for it.
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..models.inception_v3 import IMAGENET_MEAN, IMAGENET_STD
from .models import count_gmacs

COCO128 = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco128"
DATASETS = ("synthetic", "coco128")

# (name, architecture, crop size, size the crop is upsampled to before the network or None)
MODELS: Tuple[Tuple[str, str, int, Optional[int]], ...] = (
    ("v3_79", "v3_79", 79, None),
    ("v3_151", "v3_151", 151, None),
    ("v3_299", "v3_299", 299, None),
    ("v3_299 upsampled", "v3_299", 79, 299),
    ("v3_299 stem @79", "v3_299", 79, None),
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
def _coco_records(ann_file: Path, image_dir: Path):
    """[(image path, boxes XYXY [N, 4], category ids [N])] of non-crowd boxes, and {category id: name}."""
    from crop_classifier.coco_io import load_coco

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
    from crop_classifier.data.images import read_rgb

    return read_rgb(path)


def extract_all(records, sizes: Sequence[int], label_of: Dict[int, int], *, context: float,
                max_crops: int = 0) -> Tuple[Dict[int, torch.Tensor], torch.Tensor]:
    """uint8 crops ``{size: [N, 3, S, S]}`` of every box whose category is in ``label_of``, and labels ``[N]``."""
    from crop_classifier.crops import extract_crops

    crops: Dict[int, List[torch.Tensor]] = {s: [] for s in sizes}
    labels: List[int] = []
    for path, boxes, cats in records:
        keep = np.array([c in label_of for c in cats], dtype=bool)
        if max_crops:
            keep &= np.cumsum(keep) <= max_crops - len(labels)
        if not keep.any():
            continue
        image = torch.from_numpy(_read_rgb(path)).permute(2, 0, 1)
        b = torch.from_numpy(boxes[keep])
        for s in sizes:
            crops[s].append(extract_crops(image, b, s, context=context).mul_(255).round_().to(torch.uint8))
        labels.extend(label_of[c] for c in cats[keep])
        if max_crops and len(labels) >= max_crops:
            break
    return {s: torch.cat(v) for s, v in crops.items()}, torch.tensor(labels, dtype=torch.long)


def _dataset(name: str, work_dir: Path, *, synthetic_train: int, synthetic_test: int, image_size: int,
             coco_test_fraction: float, seed: int = 0):
    """(train records, test records, class names) of one dataset."""
    if name == "synthetic":
        from crop_classifier.data.synthetic import generate_scenes

        tr_dir, te_dir = work_dir / f"synthetic_train_{synthetic_train}", work_dir / f"synthetic_test_{synthetic_test}"
        tr_ann = generate_scenes(tr_dir, synthetic_train, seed=seed + 1, image_size=image_size, split_name="train")
        te_ann = generate_scenes(te_dir, synthetic_test, seed=seed + 2, image_size=image_size, split_name="test")
        train, cats = _coco_records(Path(tr_ann), tr_dir)
        test, _ = _coco_records(Path(te_ann), te_dir)
        return train, test, cats
    if name == "coco128":
        ann = COCO128 / "annotations" / "instances_train2017.json"
        if not ann.is_file():
            raise FileNotFoundError(f"coco128 annotations not found at {ann}")
        records, cats = _coco_records(ann, COCO128 / "images")
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


def _recipe_cfg(batch_size: int, epochs: int, base_lr: Optional[float], recipe: str = "cpu"):
    from crop_classifier.config import get_cfg

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


@torch.no_grad()
def recalibrate_bn(model: nn.Module, batches) -> int:
    """Recompute every BatchNorm's running statistics as a plain average over ``batches`` (train-mode
    forward passes, no gradient). After a few hundred steps the exponential running averages still carry
    their initial values (0.9^100 is 3e-5, but 0.9^10 is 0.35), so a short training run is evaluated with
    the statistics of its final weights instead; long runs are unaffected."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    n = 0
    for x in batches:
        model(x)
        n += 1
    for m, mom in zip(bns, momenta):
        m.momentum = mom
    model.train(was_training)
    return n


def train_and_evaluate(model: nn.Module, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                       test_y: torch.Tensor, class_names: Sequence[str], *, epochs: int, batch_size: int,
                       seed: int = 0, base_lr: Optional[float] = None, device: str = "cpu",
                       recipe: str = "cpu") -> Dict[str, object]:
    """Train with the engine's recipe on uint8 crops (flip augmentation), then top-1/top-5 on the test crops."""
    from crop_classifier.engine.evaluation import compute_metrics
    from crop_classifier.engine.losses import InceptionLoss
    from crop_classifier.engine.optim import build_lr_scheduler, build_optimizer, clip_gradients

    cfg = _recipe_cfg(batch_size, epochs, base_lr, recipe)
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model.to(device).train()
    n = len(train_y)
    iters_per_epoch = max(1, n // batch_size)  # drop_last, like the engine's loader
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer, iters_per_epoch)
    criterion = InceptionLoss(cfg.SOLVER.LABEL_SMOOTHING, 0.0)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255

    def prep(x: torch.Tensor) -> torch.Tensor:
        return (x.to(device).float() - mean) / std

    losses = []
    t0 = time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        for it in range(iters_per_epoch):
            idx = order[it * batch_size:(it + 1) * batch_size]
            x = prep(train_x[idx])
            flip = torch.rand(len(idx), generator=g) < 0.5
            x[flip] = x[flip].flip(-1)
            loss = criterion(model(x), train_y[idx].to(device))
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"non-finite training loss {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            clip_gradients(model.parameters(), cfg.SOLVER.CLIP_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
    train_s = time.perf_counter() - t0
    calib = train_x[torch.randperm(n, generator=g)[:min(n, 20 * batch_size)]]
    recalibrate_bn(model, (prep(calib[i:i + batch_size]) for i in range(0, len(calib), batch_size)))
    model.eval()
    with torch.inference_mode():
        logits = torch.cat([model(prep(test_x[i:i + 64])).float().cpu() for i in range(0, len(test_y), 64)])
    metrics = compute_metrics(logits, test_y, class_names)
    return {"top1": metrics["top1"], "top5": metrics["top5"], "top5_k": metrics["top5_k"],
            "mean_class_accuracy": metrics["mean_class_accuracy"], "train_s": train_s,
            "steps": epochs * iters_per_epoch, "final_loss": float(np.mean(losses[-max(1, iters_per_epoch):])),
            "lr": optimizer.param_groups[0]["lr"]}


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
    synthetic_train: int = 120,
    synthetic_test: int = 40,
    image_size: int = 512,
    coco_test_fraction: float = 0.25,
    max_train_crops: int = 0,
    models: Sequence[str] = tuple(m[0] for m in MODELS),
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> Dict[str, object]:
    from crop_classifier.crops import DEFAULT_CONTEXT
    from crop_classifier.models import build_classifier

    specs = [m for m in MODELS if m[0] in models]
    rows: List[Dict[str, object]] = []
    majority: Dict[str, float] = {}
    data_info: Dict[str, Dict[str, object]] = {}
    for ds in datasets:
        train_rec, test_rec, cats = _dataset(ds, Path(work_dir), synthetic_train=synthetic_train,
                                             synthetic_test=synthetic_test, image_size=image_size,
                                             coco_test_fraction=coco_test_fraction, seed=seed)
        # Classes: those with a training box (a test-only class could never be predicted).
        present = sorted({int(c) for _, _, cs in train_rec for c in cs})
        label_of = {c: i for i, c in enumerate(present)}
        class_names = [cats[c] for c in present]
        sizes = sorted({s for _, _, s, _ in specs})
        t0 = time.perf_counter()
        train_x, train_y = extract_all(train_rec, sizes, label_of, context=DEFAULT_CONTEXT, max_crops=max_train_crops)
        test_x, test_y = extract_all(test_rec, sizes, label_of, context=DEFAULT_CONTEXT)
        counts = torch.bincount(train_y, minlength=len(class_names))
        majority[ds] = float((test_y == counts.argmax()).float().mean())
        data_info[ds] = {"classes": len(class_names), "train_images": len(train_rec), "test_images": len(test_rec),
                         "train_crops": len(train_y), "test_crops": len(test_y),
                         "extract_s": time.perf_counter() - t0}
        log(f"  tradeoff {ds}: {len(class_names)} classes, {len(train_y)} train / {len(test_y)} test crops "
            f"(majority class {100 * majority[ds]:.1f} %)")
        for name, arch, crop, up in specs:
            torch.manual_seed(seed)  # the same initial weights for every model of one architecture
            net = build_classifier(arch, len(class_names), width=width, aux_logits=False)
            model = Upsampled(net, up) if up else net
            gmacs = count_gmacs(model.eval(), crop)
            r = train_and_evaluate(model, train_x[crop], train_y, test_x[crop], test_y, class_names, epochs=epochs,
                                   batch_size=batch_size, seed=seed, base_lr=base_lr, device=device, recipe=recipe)
            rows.append({"dataset": ds, "name": name, "arch": arch, "crop": crop,
                         "input": f"{crop}" + (f"→{up}" if up else ""), "width": width, "gmacs": gmacs,
                         "params": sum(p.numel() for p in net.parameters()),
                         "train_crops": len(train_y), "test_crops": len(test_y), **r})
            log(f"    {name:18s} {gmacs:.3f} GMACs: top-1 {100 * r['top1']:.1f} %, top-5 {100 * r['top5']:.1f} % "
                f"({r['steps']} steps, {r['train_s']:.0f} s, final loss {r['final_loss']:.2f})")
    cfg = _recipe_cfg(batch_size, epochs, base_lr, recipe)
    text = (f"Width {width}, {epochs} epochs, batch {batch_size}, recipe '{recipe}': RMSProp (decay "
            f"{cfg.SOLVER.RMSPROP_DECAY}, eps {cfg.SOLVER.RMSPROP_EPS}, momentum {cfg.SOLVER.MOMENTUM}), lr "
            f"{cfg.SOLVER.BASE_LR} x batch/{cfg.SOLVER.REFERENCE_BATCH_SIZE} decayed x{cfg.SOLVER.LR_DECAY} every "
            f"{cfg.SOLVER.LR_DECAY_EPOCHS} epochs after {cfg.SOLVER.WARMUP_EPOCHS} warm-up epochs, label smoothing "
            f"{cfg.SOLVER.LABEL_SMOOTHING}, gradient clipping {cfg.SOLVER.CLIP_GRAD_NORM}, "
            f"no auxiliary head, horizontal flips; crops of ground-truth boxes with context {DEFAULT_CONTEXT}; "
            f"from scratch (random init, seed {seed}); BN statistics recomputed on up to {20 * batch_size} "
            "training crops before evaluation.")
    return {"device": device, "width": width, "epochs": epochs, "batch_size": batch_size, "recipe": text,
            "recipe_name": recipe,
            "datasets": data_info, "majority_top1": majority, "rows": rows}
