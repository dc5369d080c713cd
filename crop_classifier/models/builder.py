"""``build_classifier``: registry (architecture) + weights (files), the way timm's builder sits on its registry."""
from __future__ import annotations

import os
from typing import Optional, Sequence, Union

from .inception_v3 import InceptionV3
from .registry import create_classifier
from .weights import load_pretrained, own_checkpoint_meta


def build_classifier(
    name: str,
    num_classes: Optional[int] = None,
    *,
    width: Optional[float] = None,
    aux_logits: bool = True,
    weights: Optional[Union[str, os.PathLike]] = None,
    dropout: float = 0.5,
    routes: Optional[Sequence[str]] = None,
) -> InceptionV3:
    """Build ``v3_79``, ``v3_151``, ``v3_299`` or the routed ``auto`` (``routes``: its stems, default all three).

    Args:
        name: the architecture.
        num_classes: classes of the head (default: a checkpoint's own, else 1000).
        width: channel multiplier (default: a checkpoint's own, else 1.0).
        weights: None (random init), ``"imagenet"`` (torchvision's file, downloaded; offline it fails naming
            the way to pass a local file), or a path to a torchvision/timm ImageNet state dict or to one of our
            checkpoints (metadata checked; its width and classes are the defaults). A class count different
            from the file's re-initialises the head.
    Returns:
        The network (``nn.Module``; ``input_size`` is its stem's).
    """
    meta = own_checkpoint_meta(weights) if weights is not None and str(weights) != "imagenet" else None
    if meta is not None:
        num_classes = int(meta["num_classes"]) if num_classes is None else num_classes
        width = float(meta.get("width", 1.0)) if width is None else width
    num_classes = 1000 if num_classes is None else num_classes
    width = 1.0 if width is None else width
    model = create_classifier(name, num_classes, width=width, aux_logits=aux_logits, dropout=dropout, routes=routes)
    if weights is not None:
        load_pretrained(model, weights, arch=name)
    return model
