"""Optimiser, learning-rate schedule and gradient clipping of the paper's recipe.

Learning-rate rule: ``lr = BASE_LR * IMS_PER_BATCH / REFERENCE_BATCH_SIZE`` where ``IMS_PER_BATCH`` is the
global batch (all processes together); the paper's 0.045 is for batches of 32. The rate then decays in
steps, ``x LR_DECAY`` every ``LR_DECAY_EPOCHS`` epochs, after an optional linear warm-up.
"""
from __future__ import annotations

import math
from typing import Iterable, List

import torch
from fvcore.common.config import CfgNode


def scaled_lr(cfg: CfgNode) -> float:
    """The peak learning rate for the configured global batch (linear scaling rule)."""
    return cfg.SOLVER.BASE_LR * cfg.SOLVER.IMS_PER_BATCH / cfg.SOLVER.REFERENCE_BATCH_SIZE


def _param_groups(model: torch.nn.Module, weight_decay: float) -> List[dict]:
    # Decay only conv/linear weights (ndim > 1), as TF-slim's regularisers did; BatchNorm scales/shifts and
    # biases are left alone.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
    """RMSProp (decay ``RMSPROP_DECAY``, epsilon ``RMSPROP_EPS``, momentum ``MOMENTUM``) or SGD with momentum.

    PyTorch's RMSProp adds epsilon outside the square root (``g / (sqrt(v) + eps)``), TensorFlow's inside;
    with eps = 1.0 both damp the step for small gradients in the same way.
    """
    s = cfg.SOLVER
    groups = _param_groups(model, s.WEIGHT_DECAY)
    lr = scaled_lr(cfg)
    if s.OPTIMIZER == "rmsprop":
        return torch.optim.RMSprop(groups, lr=lr, alpha=s.RMSPROP_DECAY, eps=s.RMSPROP_EPS, momentum=s.MOMENTUM)
    if s.OPTIMIZER == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=s.MOMENTUM, nesterov=s.MOMENTUM > 0)
    raise ValueError(f"config key SOLVER.OPTIMIZER: unknown optimizer {s.OPTIMIZER!r} (rmsprop or sgd)")


def lr_factor(iteration: int, iters_per_epoch: int, *, decay: float, decay_epochs: float,
              warmup_epochs: float = 0.0) -> float:
    """Multiplier of the peak rate at a global iteration (0-based): staircase decay times linear warm-up."""
    if iters_per_epoch <= 0:
        raise ValueError(f"iters_per_epoch must be > 0, got {iters_per_epoch}")
    # A small tolerance so an exact boundary (e.g. 2.0 epochs) is not lost to float rounding.
    factor = decay ** math.floor(iteration / (iters_per_epoch * decay_epochs) + 1e-9)
    warmup_iters = warmup_epochs * iters_per_epoch
    if warmup_iters > 0 and iteration < warmup_iters:
        factor *= (iteration + 1) / warmup_iters
    return factor


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer,
                       iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per iteration. Its state (the iteration count) goes into checkpoints; the
    schedule itself comes from the config."""
    s = cfg.SOLVER

    def factor(it: int) -> float:
        return lr_factor(it, iters_per_epoch, decay=s.LR_DECAY, decay_epochs=s.LR_DECAY_EPOCHS,
                         warmup_epochs=s.WARMUP_EPOCHS)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def clip_gradients(parameters: Iterable[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """Clip the global L2 norm of all gradients to ``max_norm`` (0: no clipping); returns the norm before."""
    # With an infinite bound clip_grad_norm_ only measures, so the logged norm means the same either way.
    return torch.nn.utils.clip_grad_norm_(list(parameters), max_norm if max_norm > 0 else float("inf"))
