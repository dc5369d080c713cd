"""Inception-v3 crop classifiers with the paper's Section 9 stems (v3_79, v3_151, v3_299)."""
from .inception_v3 import STEMS, InceptionV3, StemSpec
from .builder import build_classifier
from .registry import ARCHITECTURES, create_classifier
from .weights import (
    CheckpointError,
    WeightsUnavailableError,
    classifier_from_checkpoint,
    load_checkpoint,
    load_imagenet_weights,
    model_meta,
    save_checkpoint,
)

__all__ = [
    "ARCHITECTURES", "STEMS", "InceptionV3", "StemSpec", "build_classifier", "create_classifier", "CheckpointError",
    "WeightsUnavailableError", "classifier_from_checkpoint", "load_checkpoint", "load_imagenet_weights",
    "model_meta", "save_checkpoint",
]
