"""Training and evaluation of the crop classifiers (paper recipe, AMP, DDP-ready, resumable)."""
from .evaluation import compute_metrics, confusion_matrix, plot_confusion_matrix
from .losses import InceptionLoss, label_smoothing_cross_entropy
from .optim import build_lr_scheduler, build_optimizer, clip_gradients, lr_factor, scaled_lr
from .trainer import Trainer, TrainingParts, evaluate_checkpoint, train

__all__ = [
    "InceptionLoss", "Trainer", "build_lr_scheduler", "build_optimizer", "clip_gradients",
    "compute_metrics", "confusion_matrix", "evaluate_checkpoint", "label_smoothing_cross_entropy", "lr_factor",
    "plot_confusion_matrix", "scaled_lr", "train", "TrainingParts",
]
