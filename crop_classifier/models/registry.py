"""Architecture names -> builders of randomly initialised models (weights are ``builder``'s business)."""
from __future__ import annotations

import math
from typing import Optional, Sequence

from .inception_v3 import STEMS, InceptionV3, RoutedInceptionV3
from .routing import DEFAULT_ROUTE_ARCHS, ROUTED_ARCH

ARCHITECTURES = tuple(STEMS)  # ("v3_299", "v3_151", "v3_79")
#: Every name ``create_classifier`` takes: the three stems and the routed, shared-weight ``auto``.
ALL_ARCHITECTURES = ARCHITECTURES + (ROUTED_ARCH,)


def create_classifier(
    name: str,
    num_classes: int = 1000,
    *,
    width: float = 1.0,
    aux_logits: bool = True,
    dropout: float = 0.5,
    routes: Optional[Sequence[str]] = None,
) -> InceptionV3:
    """``v3_79``, ``v3_151``, ``v3_299`` or ``auto`` (one weight set behind several stems, ``routes``: default
    all three) with random weights (arguments checked, each error naming its value)."""
    if name not in ALL_ARCHITECTURES:
        raise ValueError(f"unknown classifier architecture {name!r}; valid choices: {', '.join(ALL_ARCHITECTURES)}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    if isinstance(width, bool) or not isinstance(width, (int, float)) or not math.isfinite(width) or not 0 < width <= 4:
        raise ValueError(f"width must be a number in (0, 4] (1.0 = torchvision's channel counts), got {width!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    kwargs = dict(width=float(width), aux_logits=aux_logits, dropout=dropout)
    if name == ROUTED_ARCH:
        archs = tuple(routes or DEFAULT_ROUTE_ARCHS)
        unknown = [a for a in archs if a not in STEMS]
        if unknown:
            raise ValueError(f"unknown route architectures {unknown}; valid: {', '.join(ARCHITECTURES)}")
        return RoutedInceptionV3([STEMS[a] for a in archs], num_classes, **kwargs)
    return InceptionV3(STEMS[name], num_classes, **kwargs)
