"""The paper's Table 2 redone for detector crops: accuracy vs cost of the three stems, plus two baselines.

Every model is trained from scratch with the same recipe, data, epochs and batch size, at one stated
width, and evaluated on held-out crops (top-1/top-5):

* ``v3_79``, ``v3_151``, ``v3_299``: the Section 9 stems, each fed crops at its own input size;
* ``v3_299 upsampled``: v3_299 fed the *same* 79 px crops bilinearly upsampled to 299 (the usual way to
  put a small object through a 299 px network: the cost of 299, the information of 79);
* ``v3_299 stem @79``: the unmodified 299 stem fed 79 px crops directly (Section 9's "just shrink it"
  network, with its much lower cost).

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
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import update_bn

from crop_classifier.coco_io import load_coco
from crop_classifier.config import get_cfg
from crop_classifier.crops import DEFAULT_CONTEXT, extract_crops
from crop_classifier.data.images import read_rgb
from crop_classifier.data.synthetic import generate_scenes
from crop_classifier.engine import Trainer, TrainingParts
from crop_classifier.engine.data import TensorCropDataset
from crop_classifier.engine.evaluation import compute_metrics
from crop_classifier.models import build_classifier, model_meta
from crop_classifier.models.inference import build_inference_classifier

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
                max_crops: int = 0) -> Tuple[Dict[int, torch.Tensor], torch.Tensor]:
    """uint8 crops ``{size: [N, 3, S, S]}`` of every box whose category is in ``label_of``, and labels ``[N]``."""
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


def _trainer_cfg(settings: TrainSettings, batch_size: int, meta: Dict[str, object], output_dir: Path):
    cfg = _recipe_cfg(batch_size, settings.epochs, settings.base_lr, settings.recipe)
    cfg.MODEL.ARCH, cfg.MODEL.WIDTH, cfg.MODEL.AUX_LOGITS = meta["arch"], meta["width"], False
    cfg.DATALOADER.NUM_WORKERS = 0  # the crops are in memory: workers would only copy them
    cfg.SEED, cfg.OUTPUT_DIR = settings.seed, str(output_dir)
    return cfg


def train_and_evaluate(model: nn.Module, meta: Dict[str, object], train: Tuple[torch.Tensor, torch.Tensor],
                       test: Tuple[torch.Tensor, torch.Tensor], settings: TrainSettings,
                       output_dir: Path) -> Dict[str, object]:
    """Trains ``model`` through the engine's ``Trainer`` on uint8 crops ``train = (x, y)`` (flips, the
    training normalisation), recomputes its BN statistics, then top-1/top-5 of its inference form on
    ``test``. ``output_dir`` gets the run's config and metrics (emptied first)."""
    shutil.rmtree(output_dir, ignore_errors=True)  # the metrics file is appended to
    cfg = _trainer_cfg(settings, min(settings.batch_size, len(train[1])), meta, output_dir)
    parts = TrainingParts(model, meta, TensorCropDataset(*train), device=torch.device(settings.device))
    trainer = Trainer(cfg, progress=False, parts=parts)
    try:
        epochs = [trainer.train_one_epoch(e) for e in range(settings.epochs)]
    finally:
        trainer.metrics.close()
    # After a few hundred steps the BN running averages still carry their initial values (0.9^10 is 0.35),
    # so a short run is evaluated with the statistics of its final weights instead; long runs are unaffected.
    update_bn(itertools.islice(trainer.train_loader, CALIBRATION_BATCHES), trainer.module, device=trainer.device)
    classifier = build_inference_classifier(trainer.module, meta, device=trainer.device)
    test_x, test_y = test
    probs = torch.cat([classifier(test_x[i:i + 64].float().div_(255)).cpu() for i in range(0, len(test_y), 64)])
    metrics = compute_metrics(probs, test_y, meta["class_names"])
    return {"top1": metrics["top1"], "top5": metrics["top5"], "top5_k": metrics["top5_k"],
            "mean_class_accuracy": metrics["mean_class_accuracy"], "train_s": sum(e["time_s"] for e in epochs),
            "steps": settings.epochs * trainer.iters_per_epoch, "final_loss": epochs[-1]["loss"],
            "lr": epochs[-1]["lr"], "batch_size": cfg.SOLVER.IMS_PER_BATCH}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


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
    specs = [m for m in MODELS if m[0] in models]
    settings = TrainSettings(epochs, batch_size, seed=seed, base_lr=base_lr, device=device, recipe=recipe)
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
            meta = model_meta(net, arch, class_names, context=DEFAULT_CONTEXT, mode="square")
            meta.update(input_size=crop, **({"upsampled_to": up} if up else {}))
            gmacs = count_gmacs(model.eval(), crop)
            r = train_and_evaluate(model, meta, (train_x[crop], train_y), (test_x[crop], test_y), settings,
                                   Path(work_dir) / "runs" / ds / _slug(name))
            rows.append({"dataset": ds, "name": name, "arch": arch, "crop": crop,
                         "input": f"{crop}" + (f"→{up}" if up else ""), "width": width, "gmacs": gmacs,
                         "params": sum(p.numel() for p in net.parameters()),
                         "train_crops": len(train_y), "test_crops": len(test_y), **r})
            log(f"    {name:18s} {gmacs:.3f} GMACs: top-1 {100 * r['top1']:.1f} %, top-5 {100 * r['top5']:.1f} % "
                f"({r['steps']} steps, {r['train_s']:.0f} s, final loss {r['final_loss']:.2f})")
    cfg = _recipe_cfg(batch_size, epochs, base_lr, recipe)
    amp = f", AMP ({cfg.SOLVER.AMP_DTYPE})" if torch.device(device).type == "cuda" and cfg.SOLVER.AMP else ""
    text = (f"Width {width}, {epochs} epochs, batch {batch_size}, recipe '{recipe}': RMSProp (decay "
            f"{cfg.SOLVER.RMSPROP_DECAY}, eps {cfg.SOLVER.RMSPROP_EPS}, momentum {cfg.SOLVER.MOMENTUM}), lr "
            f"{cfg.SOLVER.BASE_LR} x batch/{cfg.SOLVER.REFERENCE_BATCH_SIZE} decayed x{cfg.SOLVER.LR_DECAY} every "
            f"{cfg.SOLVER.LR_DECAY_EPOCHS} epochs after {cfg.SOLVER.WARMUP_EPOCHS} warm-up epochs, label smoothing "
            f"{cfg.SOLVER.LABEL_SMOOTHING}, gradient clipping {cfg.SOLVER.CLIP_GRAD_NORM}, "
            f"no auxiliary head, horizontal flips{amp}; trained by the engine's Trainer; crops of ground-truth "
            f"boxes with context {DEFAULT_CONTEXT}; from scratch (random init, seed {seed}); BN statistics "
            f"recomputed (torch.optim.swa_utils.update_bn) on up to {CALIBRATION_BATCHES} training batches before "
            "evaluation, which runs the inference form (BN folded).")
    return {"device": device, "width": width, "epochs": epochs, "batch_size": batch_size, "recipe": text,
            "recipe_name": recipe,
            "datasets": data_info, "majority_top1": majority, "rows": rows}
