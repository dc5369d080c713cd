"""The training loop: the paper's recipe with AMP, DDP, per-epoch checkpoints and exact resume."""
from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
from fvcore.common.config import CfgNode
from torch import nn
from torch.utils.data import Dataset
from tqdm import tqdm

from ..config import config_routes, crop_spec
from ..models import Routes, build_classifier, classifier_from_checkpoint, load_imagenet_weights, model_meta
from ..models.weights import check_meta
from ..errors import CheckpointError, NonFiniteLossError, ParameterError
from ..structures import BACKGROUND_CLASS, CropSpec, object_class_names
from ..utils.io import atomic_write_text
from . import distributed as du
from .checkpoint import EpochCheckpointer, capture_rng_state, restore_rng_state
from .data import (build_dataset_train_loader, build_test_loader, build_train_loader, extra_training_samples,
                   load_datasets)
from .evaluation import box_sides, compute_metrics, format_size_buckets, inference_form, predict_samples, write_results
from .losses import InceptionLoss
from .metrics import MetricsWriter
from .optim import build_lr_scheduler, build_optimizer, clip_gradients, scaled_lr

logger = logging.getLogger(__name__)

# Meta keys a resumed run's checkpoint must share with the config it resumes under.
RESUME_META_KEYS = ("arch", "num_classes", "class_names", "input_size", "width", "crop", "routes")


def seed_everything(*keys: int) -> None:
    """Seeds Python, NumPy and torch from a tuple of integers (e.g. seed, epoch, rank)."""
    seed = int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _set_epoch(loader, epoch: int) -> None:
    # ImageGroupedBatchSampler shuffles per epoch itself; a BatchSampler leaves it to its DistributedSampler.
    batches = loader.batch_sampler
    (batches if hasattr(batches, "set_epoch") else batches.sampler).set_epoch(epoch)


def _with_jitter(routes: Optional[Routes], cfg: CfgNode) -> Optional[Routes]:
    """Training routes: ``routes`` with ``INPUT.ROUTE_JITTER``."""
    return None if routes is None else Routes(routes.archs, routes.thresholds, float(cfg.INPUT.ROUTE_JITTER))


def _grad_scaler(enabled: bool):
    # torch.amp.GradScaler is the current name (torch >= 2.3); torch.cuda.amp's is deprecated there.
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler("cuda", enabled=enabled)
    return torch.cuda.amp.GradScaler(enabled=enabled)


@dataclass
class TrainingParts:
    """What a caller that holds its data in memory gives the ``Trainer`` instead of ``DATASETS``/``MODEL``
    names (the trade-off benchmark): the network, its checkpoint meta, a training dataset whose
    ``__getitems__`` returns ready batches (augmented and normalised, e.g. ``engine.data.TensorCropDataset``)
    and optionally the device. The recipe (optimiser, schedule, loss, clipping, AMP, DDP, metrics) still
    comes from the config; there is no test set (the caller evaluates)."""

    model: nn.Module
    meta: Dict[str, Any]
    train_dataset: Dataset
    device: Optional[torch.device] = None


class Trainer:
    """Builds everything a run needs from the config (or from ``parts``); ``train()`` runs it.

    Attributes tests and tools use: ``model`` (DDP-wrapped when distributed), ``module`` (the bare
    classifier), ``optimizer``, ``scheduler``, ``meta``, ``start_epoch``, ``checkpointer``.
    """

    def __init__(self, cfg: CfgNode, *, resume: bool = False, progress: bool = True,
                 parts: Optional[TrainingParts] = None):
        self.cfg = cfg
        du.init_from_env()
        self.rank, self.world_size = du.get_rank(), du.get_world_size()
        self.is_main = du.is_main_process()
        self.device = torch.device(parts.device) if parts and parts.device is not None else du.training_device()
        self.progress = progress and self.is_main
        self.output_dir = Path(cfg.OUTPUT_DIR)
        if cfg.SOLVER.IMS_PER_BATCH % self.world_size:
            raise ValueError(f"config key SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) is the global batch and "
                             f"must divide evenly over {self.world_size} processes")
        self.per_rank_batch = cfg.SOLVER.IMS_PER_BATCH // self.world_size
        seed_everything(cfg.SEED)  # the same initial weights on every process
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK
        on_gpu = self.device.type == "cuda"
        self.amp_dtype = getattr(torch, cfg.SOLVER.AMP_DTYPE) if (on_gpu and cfg.SOLVER.AMP) else None
        self.channels_last = cfg.MODEL.CHANNELS_LAST
        self.test_samples: List = []
        self.routes: Optional[Routes] = None  # training routes (with jitter) of a routed classifier
        self.test_loader = None
        if parts is None:
            module = self._build_from_config(cfg)
        else:
            module, self.meta = parts.model, dict(parts.meta)
            self.class_names, self.input_size = list(self.meta["class_names"]), int(self.meta["input_size"])
            self.routes = _with_jitter(Routes.from_meta(self.meta), cfg)
            self.train_loader = build_dataset_train_loader(cfg, parts.train_dataset, per_rank_batch=self.per_rank_batch,
                                                           num_replicas=self.world_size, rank=self.rank,
                                                           routes=self.routes)
        self._place(module)

        # ---- optimisation
        self.iters_per_epoch = len(self.train_loader)
        self.optimizer = build_optimizer(cfg, self.module)
        self.scheduler = build_lr_scheduler(cfg, self.optimizer, self.iters_per_epoch)
        self.scaler = _grad_scaler(self.amp_dtype == torch.float16)
        self.criterion = InceptionLoss(cfg.SOLVER.LABEL_SMOOTHING, cfg.MODEL.AUX_LOSS_WEIGHT)
        self.checkpointer = EpochCheckpointer(self.output_dir, keep=cfg.SOLVER.CHECKPOINTS_TO_KEEP)
        self.metrics = MetricsWriter(self.output_dir, enabled=self.is_main)
        self.start_epoch = 0
        self.last_eval: Optional[Dict[str, Any]] = None

        if self.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.output_dir / "config.yaml", cfg.dump())
        logger.info("training %s (width %s, %d classes, %dx%d crops) on %d crops, %d iterations/epoch, "
                    "global batch %d over %d process(es), peak lr %.4g, device %s",
                    self.meta["arch"], self.meta["width"], len(self.class_names), self.input_size, self.input_size,
                    len(self.train_loader.dataset), self.iters_per_epoch, cfg.SOLVER.IMS_PER_BATCH, self.world_size,
                    scaled_lr(cfg), self.device)
        if resume:
            self.resume()

    def _build_from_config(self, cfg: CfgNode) -> nn.Module:
        """Datasets, classifier, meta and loaders named by the config; returns the (unplaced) classifier."""
        if not cfg.DATASETS.TRAIN:
            raise ValueError("config key DATASETS.TRAIN is empty: name at least one training dataset")
        train_samples, class_names = load_datasets(
            cfg.DATASETS.TRAIN, class_names=list(cfg.DATASETS.CLASS_NAMES) or None,
            min_size=cfg.DATASETS.MIN_BOX_SIZE_TRAIN)
        if cfg.DATASETS.TEST:
            self.test_samples = load_datasets(cfg.DATASETS.TEST, class_names=class_names,
                                              min_size=cfg.DATASETS.MIN_BOX_SIZE_TEST)[0]
        # Detector boxes or random background boxes; the background class is the last one.
        train_samples = list(train_samples) + extra_training_samples(cfg, train_samples, len(class_names))
        if cfg.MODEL.BACKGROUND_CLASS:
            class_names = list(class_names) + [BACKGROUND_CLASS]
        self.class_names = class_names
        num_classes = cfg.MODEL.NUM_CLASSES or len(class_names)
        if num_classes != len(class_names):
            raise ValueError(f"config key MODEL.NUM_CLASSES is {cfg.MODEL.NUM_CLASSES} but the datasets define "
                             f"{len(class_names)} classes; set it to 0 to derive it")
        routes = config_routes(cfg)  # None unless MODEL.ARCH is auto
        module = build_classifier(cfg.MODEL.ARCH, num_classes, width=cfg.MODEL.WIDTH, aux_logits=cfg.MODEL.AUX_LOGITS,
                                  routes=routes.archs if routes else None)
        if cfg.MODEL.IMAGENET_WEIGHTS:
            load_imagenet_weights(module, cfg.MODEL.IMAGENET_WEIGHTS)
        # A routed classifier records its smallest route's input size (each crop is fed at its route's).
        crop = crop_spec(cfg, routes.input_sizes[0] if routes else cfg.INPUT.SIZE or module.input_size)
        self.input_size = crop.size
        self.meta = model_meta(module, cfg.MODEL.ARCH, class_names, routes=routes, **crop.to_meta())
        self.meta["input_size"] = crop.size
        if cfg.MODEL.BACKGROUND_CLASS:
            self.meta["background_class"] = BACKGROUND_CLASS
        self.routes = config_routes(cfg, jitter=True)
        if routes:
            logger.info("routed classifier: %s; training jitter %.2f", routes.describe(), self.routes.jitter)
        self.train_loader = build_train_loader(cfg, train_samples, self.input_size, per_rank_batch=self.per_rank_batch,
                                               num_replicas=self.world_size, rank=self.rank, routes=self.routes)
        if self.test_samples:
            self.test_loader = build_test_loader(cfg, self.test_samples, crop.size, context=crop.context,
                                                 mode=crop.mode, routes=routes)
        return module

    def _place(self, module: nn.Module) -> None:
        """Moves the classifier to the device (channels_last, SyncBN, DDP as configured): ``module``/``model``."""
        module.to(self.device)
        if self.channels_last:
            module.to(memory_format=torch.channels_last)
        if self.world_size > 1 and self.cfg.MODEL.SYNC_BN:
            if self.device.type != "cuda":
                raise ValueError("config key MODEL.SYNC_BN: PyTorch's SyncBatchNorm runs on GPUs only; set it False on CPU")
            module = torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
        self.module = self.model = module
        if self.world_size > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    # ------------------------------------------------------------------------------------------ resume
    def resume(self) -> bool:
        """Continue from ``last_checkpoint`` in OUTPUT_DIR: weights, optimiser, schedule, scaler, epoch and
        random states. Returns False (training starts from scratch) when there is no checkpoint."""
        ckpt = self.checkpointer.load_last()
        if ckpt is None:
            logger.info("--resume: no checkpoint in %s; starting from scratch", self.output_dir)
            return False
        self._check_resume_routes(ckpt)
        check_meta(ckpt["meta"], {k: self.meta[k] for k in RESUME_META_KEYS if k in self.meta}, ckpt["path"])
        if ckpt.get("iters_per_epoch") != self.iters_per_epoch:
            logger.warning("%s was written with %s iterations per epoch, this run has %d: the schedule shifts",
                           ckpt["path"], ckpt.get("iters_per_epoch"), self.iters_per_epoch)
        self.module.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        if len(ckpt["rng"]) == self.world_size:
            restore_rng_state(ckpt["rng"][self.rank])
        logger.info("resumed from %s after epoch %d", ckpt["path"], self.start_epoch)
        return True

    def _check_resume_routes(self, ckpt: Dict[str, Any]) -> None:
        """A routed run resumes only under the routes (stems and thresholds) it was trained with (checked before
        the other meta keys: a route change also changes the input size, which would hide the cause)."""
        meta, path = ckpt["meta"], ckpt["path"]
        if meta.get("routes") != self.meta.get("routes"):
            raise CheckpointError(
                f"{path}: --resume: the checkpoint was trained with routes {meta.get('routes')}, the config gives "
                f"{self.meta.get('routes')} (MODEL.ARCH, MODEL.ROUTES.ARCHS/THRESHOLDS); set them as the "
                f"checkpoint has them, or train into another OUTPUT_DIR")

    # ------------------------------------------------------------------------------------------ training
    def train(self) -> Dict[str, Any]:
        """Runs epochs ``start_epoch .. MAX_EPOCHS``; returns a summary (final metrics, file paths and each
        epoch's training summary)."""
        cfg = self.cfg
        max_epochs = cfg.SOLVER.MAX_EPOCHS
        epochs: List[Dict[str, float]] = []
        try:
            for epoch in range(self.start_epoch, max_epochs):
                epochs.append(self.train_one_epoch(epoch))
                done = epoch + 1
                last = done == max_epochs
                if self.test_loader is not None and (last or (cfg.TEST.EVAL_PERIOD and done % cfg.TEST.EVAL_PERIOD == 0)):
                    self.evaluate(done)
                if last or done % cfg.SOLVER.CHECKPOINT_PERIOD == 0:
                    self.save_checkpoint(done)
            final = None
            if self.is_main:
                final = self.checkpointer.save_final(self.module, self.meta)
                logger.info("wrote %s", final)
            du.barrier()
        finally:
            self.metrics.close()
        return {"model_final": final, "last_checkpoint": self.checkpointer.last_path() if self.is_main else None,
                "eval": self.last_eval, "epochs": max_epochs, "train": epochs}

    def train_one_epoch(self, epoch: int) -> Dict[str, float]:
        cfg = self.cfg
        # Every epoch's random streams (sampler order, workers, crop jitter, augmentation, dropout) are a
        # function of (SEED, epoch, rank) alone, so a resumed run repeats them exactly.
        seed_everything(cfg.SEED, epoch, self.rank)
        self.model.train()
        _set_epoch(self.train_loader, epoch)
        n_iter = len(self.train_loader)
        totals = {"loss": 0.0, "correct": 0, "seen": 0}
        window = {"loss": 0.0, "grad_norm": 0.0, "steps": 0}
        t_epoch = t_window = time.perf_counter()
        bar = tqdm(self.train_loader, total=n_iter, desc=f"epoch {epoch + 1}/{cfg.SOLVER.MAX_EPOCHS}",
                   disable=not self.progress, dynamic_ncols=True)
        for i, (images, labels) in enumerate(bar):
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            labels = labels.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float16,
                                enabled=self.amp_dtype is not None):
                outputs = self.model(images)
                loss = self.criterion(outputs, labels)
            # Averaged over processes: every process sees the same value, so all of them stop together.
            loss_value = float(du.all_reduce_sum(loss.detach().float().clone())) / self.world_size
            if not math.isfinite(loss_value):
                self._stop_on_non_finite(loss_value, epoch, i)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the loss-scaled ones
            grad_norm = float(clip_gradients(self.module.parameters(), cfg.SOLVER.CLIP_GRAD_NORM))
            lr = self.optimizer.param_groups[0]["lr"]
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()

            logits = outputs[0] if isinstance(outputs, (tuple, list)) else outputs
            batch = labels.numel()
            totals["loss"] += loss_value * batch
            totals["correct"] += int((logits.argmax(1) == labels).sum())
            totals["seen"] += batch
            window["loss"] += loss_value
            window["grad_norm"] += grad_norm
            window["steps"] += 1
            if (i + 1) % cfg.SOLVER.LOG_PERIOD == 0 or i + 1 == n_iter:
                now = time.perf_counter()
                step = epoch * n_iter + i + 1
                rec = {"epoch": epoch + (i + 1) / n_iter, "lr": lr, "loss": window["loss"] / window["steps"],
                       "grad_norm": window["grad_norm"] / window["steps"],
                       "img_per_s": window["steps"] * cfg.SOLVER.IMS_PER_BATCH / max(now - t_window, 1e-9)}
                self.metrics.write("train", step, rec)
                bar.set_postfix(loss=f"{rec['loss']:.3f}", lr=f"{lr:.3g}")
                window = {"loss": 0.0, "grad_norm": 0.0, "steps": 0}
                t_window = now
        elapsed = time.perf_counter() - t_epoch
        summary = {"epoch": epoch + 1, "loss": totals["loss"] / max(totals["seen"], 1),
                   "top1": totals["correct"] / max(totals["seen"], 1), "lr": self.optimizer.param_groups[0]["lr"],
                   "time_s": elapsed, "img_per_s": totals["seen"] * self.world_size / max(elapsed, 1e-9)}
        self.metrics.write("epoch", (epoch + 1) * n_iter, summary)
        logger.info("epoch %d: loss %.4f, train top-1 %.2f%% (this process's crops), %.1f s",
                    epoch + 1, summary["loss"], 100 * summary["top1"], elapsed)
        return summary

    def _stop_on_non_finite(self, value: float, epoch: int, it: int) -> None:
        last = self.checkpointer.last_path()
        kept = f"the last good checkpoint is kept: {last}" if last else "no checkpoint had been written yet"
        raise NonFiniteLossError(
            f"training loss is not finite ({value}) at epoch {epoch + 1}, iteration {it + 1}: training stopped and no checkpoint "
            f"was written after it; {kept}. Lower SOLVER.BASE_LR (or raise SOLVER.WARMUP_EPOCHS) and resume with "
            f"--resume.")

    def save_checkpoint(self, epoch: int) -> Optional[Path]:
        """Checkpoint after ``epoch`` completed epochs, with everything ``resume`` restores."""
        rng: List[Any] = [capture_rng_state()]
        if self.world_size > 1:
            rng = [None] * self.world_size
            dist.all_gather_object(rng, capture_rng_state())
        path = None
        if self.is_main:
            extra = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                     "scaler": self.scaler.state_dict(), "rng": rng, "iters_per_epoch": self.iters_per_epoch,
                     "world_size": self.world_size, "config": self.cfg.dump()}
            path = self.checkpointer.save(epoch, self.module, self.meta, extra)
        du.barrier()
        return path

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, epoch: int) -> Optional[Dict[str, Any]]:
        """Evaluates on DATASETS.TEST on the main process (the others wait); writes ``inference/``."""
        metrics = None
        if self.is_main:
            classifier = inference_form(self.module, self.meta, self.device, amp_dtype=self.amp_dtype,
                                        channels_last=self.channels_last)
            scores, labels = predict_samples(classifier, self.test_loader, progress=self.progress)
            shorter, longer = box_sides(self.test_samples)
            metrics = compute_metrics(scores, labels, self.class_names, box_sizes=shorter, box_long_sides=longer)
            write_results(metrics, self.output_dir / "inference", extra={"epoch": epoch})
            logger.info("top-1 per box size (longer side, px):\n%s", format_size_buckets(metrics["size_buckets"]))
            buckets = {f"top1_{b['bucket']}px": b["top1"] for b in metrics["size_buckets"] if b["top1"] is not None}
            self.metrics.write("eval", epoch * self.iters_per_epoch,
                               {"epoch": epoch, "top1": metrics["top1"], "top5": metrics["top5"],
                                "mean_class_accuracy": metrics["mean_class_accuracy"], **buckets})
            self.last_eval = {k: metrics[k] for k in ("top1", "top5", "mean_class_accuracy", "num_samples")}
            self.meta["score_calibration"] = score_calibration(scores, labels, self.class_names)
        du.barrier()
        return metrics


def score_calibration(probs: torch.Tensor, labels: torch.Tensor, class_names: List[str]) -> Dict[str, float]:
    """``{class: mean probability the classifier gives the true class on crops of that class}``: the mean
    fused/detector score ratio of a classified box of that class (``rescore``), which the second stage gives
    boxes its size gates keep from the classifier, so that they do not outrank classified ones."""
    out = {}
    for k, name in enumerate(class_names):
        mine = labels == k
        if bool(mine.any()):
            out[name] = round(float(probs[mine, k].float().mean()), 6)
    return out


def train(cfg: CfgNode, *, resume: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Trains the configured classifier; see ``Trainer``."""
    return Trainer(cfg, resume=resume, progress=progress).train()


def evaluate_checkpoint(cfg: CfgNode, weights: Path, *, output_dir: Optional[Path] = None,
                        progress: bool = True, route_thresholds: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """Evaluates a checkpoint on ``DATASETS.TEST``; writes ``results.json`` and ``confusion_matrix.png``.

    The checkpoint decides the classes, input size and crop settings (so crops match training); its
    architecture and width must match the config's. A routed checkpoint (arch ``auto``) feeds each crop at its
    route's size, with the checkpoint's thresholds unless ``route_thresholds`` (``--route-thresholds``) are
    given. ``size_buckets``: top-1 per native size bucket, for any classifier.
    """
    if not cfg.DATASETS.TEST:
        raise ValueError("config key DATASETS.TEST is empty: name the dataset(s) to evaluate on")
    device = du.training_device()
    model, meta = classifier_from_checkpoint(weights, map_location=device,
                                             expected_meta={"arch": cfg.MODEL.ARCH, "width": cfg.MODEL.WIDTH})
    crop = CropSpec.from_meta(meta) if meta.get("crop") else crop_spec(cfg, meta["input_size"])
    samples, _ = load_datasets(cfg.DATASETS.TEST, class_names=object_class_names(meta),
                               min_size=cfg.DATASETS.MIN_BOX_SIZE_TEST)
    routes = _evaluation_routes(meta, route_thresholds)
    loader = build_test_loader(cfg, samples, crop.size, context=crop.context, mode=crop.mode, routes=routes)
    amp_dtype = getattr(torch, cfg.SOLVER.AMP_DTYPE) if device.type == "cuda" and cfg.SOLVER.AMP else None
    classifier = inference_form(model, meta, device, amp_dtype=amp_dtype, channels_last=cfg.MODEL.CHANNELS_LAST,
                                route_thresholds=route_thresholds)
    scores, labels = predict_samples(classifier, loader, progress=progress)
    shorter, longer = box_sides(samples)
    metrics = compute_metrics(scores, labels, meta["class_names"], box_sizes=shorter, box_long_sides=longer)
    out = Path(output_dir) if output_dir else Path(cfg.OUTPUT_DIR) / "inference"
    extra = {"weights": str(weights), "datasets": list(cfg.DATASETS.TEST), "crop": crop.to_meta(),
             "input_size": crop.size}
    if routes is not None:
        extra["routes"] = routes.to_meta()
    paths = write_results(metrics, out, extra=extra)
    return {**metrics, **extra, "paths": {k: str(v) for k, v in paths.items()}}


def _evaluation_routes(meta: Dict[str, Any], thresholds: Optional[Sequence[float]]) -> Optional[Routes]:
    """The routes a checkpoint is evaluated with: its meta's, with ``thresholds`` when given."""
    routes = Routes.from_meta(meta)
    if routes is None:
        if thresholds is not None:
            raise ParameterError("route_thresholds", f"the checkpoint is a single-stem {meta['arch']} classifier, "
                                 "not a routed one (arch auto)")
        return None
    try:
        return routes.with_thresholds(thresholds)
    except ValueError as e:
        raise ParameterError("route_thresholds", str(e)) from None
