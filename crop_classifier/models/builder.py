"""``build_classifier``: registry (architecture) + weights (files), the way timm's builder sits on its registry."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from .inception_v3 import InceptionV3
from .registry import create_classifier
from .weights import load_pretrained


def build_classifier(
    name: str,
    num_classes: int = 1000,
    *,
    width: float = 1.0,
    aux_logits: bool = True,
    weights: Optional[Union[str, os.PathLike]] = None,
    dropout: float = 0.5,
    routes: Optional[Sequence[str]] = None,
) -> InceptionV3:
    """Build ``v3_79``, ``v3_151``, ``v3_299`` or the routed ``auto`` (``routes``: its stems, default all three).

    ``weights``: None (random init), ``"imagenet"`` (torchvision's file, downloaded; offline it fails naming
    the way to pass a local file), or a path to a torchvision/timm ImageNet state dict or to one of our
    checkpoints (metadata checked). A class count different from the file's re-initialises the head.
    """
    model = create_classifier(name, num_classes, width=width, aux_logits=aux_logits, dropout=dropout, routes=routes)
    if weights is not None:
        load_pretrained(model, weights, arch=name)
    return model
