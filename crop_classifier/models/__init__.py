"""Inception-v3 crop classifiers with the paper's Section 9 stems (v3_79, v3_151, v3_299)."""
from .inception_v3 import STEMS, InceptionV3, RoutedInceptionV3, StemSpec
from .builder import build_classifier
from .registry import ALL_ARCHITECTURES, ARCHITECTURES, create_classifier
from .routing import ROUTED_ARCH, Routes, native_sides
from .weights import (
    classifier_from_checkpoint,
    load_checkpoint,
    load_imagenet_weights,
    model_meta,
    save_checkpoint,
)

__all__ = [
    "ALL_ARCHITECTURES", "ARCHITECTURES", "ROUTED_ARCH", "RoutedInceptionV3", "Routes", "native_sides", "STEMS", "InceptionV3", "StemSpec", "build_classifier", "create_classifier",
    "classifier_from_checkpoint", "load_checkpoint", "load_imagenet_weights",
    "model_meta", "save_checkpoint",
]
