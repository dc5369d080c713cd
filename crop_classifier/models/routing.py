"""Size-adaptive routing: each crop goes to the Section 9 stem whose input size fits its native size.

The three stems (``v3_79``, ``v3_151``, ``v3_299``) share every parameter, so one weight set serves all
three; only the input size (and the stem's strides/pooling, which carry no parameters) differ. A crop's
*native side* is the longer side, in pixels of the original image, of the region ``crops.crop_boxes``
samples (the box widened by its context margin). ``Routes.assign`` buckets native sides by ``thresholds``:
route ``i`` takes native sides in ``(thresholds[i-1], thresholds[i]]``.

Default thresholds: the geometric means of neighbouring input sizes (109 px between 79 and 151, 212 px
between 151 and 299), so no crop is resampled by more than a factor ~1.4 relative to its route's nearest
neighbour. They are configurable (``MODEL.ROUTES.THRESHOLDS``, ``--route-thresholds``) and recorded in
the checkpoint meta (``meta["routes"]``).

Training (``Routes.sample``) draws each crop's route from its native side, with probability ``jitter``
moved to a neighbouring route so every route sees crops of every size near its boundaries.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..structures import context_extent
from .inception_v3 import STEMS

#: The architecture name of the routed, shared-weight classifier (``--classifier auto``, ``MODEL.ARCH auto``).
ROUTED_ARCH = "auto"
DEFAULT_ROUTE_ARCHS: Tuple[str, ...] = ("v3_79", "v3_151", "v3_299")


def _default_thresholds(archs: Sequence[str]) -> Tuple[float, ...]:
    sizes = [STEMS[a].input_size for a in archs]
    return tuple(round(math.sqrt(a * b), 1) for a, b in zip(sizes[:-1], sizes[1:]))


def native_sides(boxes: Any, context: float) -> np.ndarray:
    """``[N]`` float64: the longer side (px) of each XYXY box widened by ``context`` on every side, i.e. the
    original-image extent a crop of that box covers (``crops.crop_boxes``'s geometry, before clamping)."""
    b = boxes.detach().cpu().double().numpy() if isinstance(boxes, Tensor) else np.asarray(boxes, np.float64)
    b = b.reshape(-1, 4)
    wh = context_extent(np.clip(b[:, 2:] - b[:, :2], 0, None), context)
    return np.maximum(wh.max(axis=1), 1.0) if len(b) else np.zeros(0)


@dataclass(frozen=True)
class Routes:
    """Which stem takes which crop. ``archs``: the routes, smallest input first; ``thresholds``: the native
    sides (px) between consecutive routes (one fewer than routes, increasing); ``jitter``: training only, the
    probability that a crop is fed at a neighbouring route's size instead of its own."""

    archs: Tuple[str, ...] = DEFAULT_ROUTE_ARCHS
    thresholds: Optional[Tuple[float, ...]] = None
    jitter: float = 0.0

    def __post_init__(self) -> None:
        archs = tuple(str(a) for a in self.archs)
        unknown = [a for a in archs if a not in STEMS]
        if not archs or unknown:
            raise ValueError(f"routes: unknown or missing architectures {unknown or list(archs)}; valid: "
                             f"{', '.join(STEMS)}")
        sizes = [STEMS[a].input_size for a in archs]
        if sizes != sorted(set(sizes)):
            raise ValueError(f"routes must be distinct and ordered by input size, smallest first; got {list(archs)}")
        th = _default_thresholds(archs) if self.thresholds is None else tuple(float(t) for t in self.thresholds)
        if len(th) != len(archs) - 1 or any(not math.isfinite(t) or t <= 0 for t in th) \
                or any(a >= b for a, b in zip(th[:-1], th[1:])):
            raise ValueError(f"route thresholds must be {len(archs) - 1} increasing positive sizes (px) between the "
                             f"routes {list(archs)}; got {list(th)}")
        if not 0.0 <= float(self.jitter) <= 1.0:
            raise ValueError(f"route jitter must be in [0, 1], got {self.jitter!r}")
        object.__setattr__(self, "archs", archs)
        object.__setattr__(self, "thresholds", th)
        object.__setattr__(self, "jitter", float(self.jitter))

    # ------------------------------------------------------------------ properties
    @property
    def input_sizes(self) -> Tuple[int, ...]:
        return tuple(STEMS[a].input_size for a in self.archs)

    def __len__(self) -> int:
        return len(self.archs)

    # ------------------------------------------------------------------ assignment
    def assign(self, sides: Any) -> np.ndarray:
        """``[N]`` int64 route index of each native side (see ``native_sides``)."""
        s = np.asarray(sides.detach().cpu() if isinstance(sides, Tensor) else sides, dtype=np.float64).reshape(-1)
        return np.searchsorted(np.asarray(self.thresholds), s, side="left").astype(np.int64)

    def sizes_for(self, sides: Any) -> np.ndarray:
        """``[N]`` int64 input size (px) of each native side's route."""
        return np.asarray(self.input_sizes, dtype=np.int64)[self.assign(sides)]

    def sample(self, sides: Any, rng: np.random.Generator) -> np.ndarray:
        """Training routes: ``assign``, then with probability ``jitter`` one step to a neighbouring route
        (towards the nearer boundary: up above the route's geometric centre, down below it)."""
        route = self.assign(sides)
        if self.jitter <= 0 or len(self.archs) == 1:
            return route
        s = np.asarray(sides, dtype=np.float64).reshape(-1)
        centre = np.asarray(self.input_sizes, dtype=np.float64)[route]
        step = np.where(s >= centre, 1, -1)
        step = np.where(route + step < 0, 1, np.where(route + step >= len(self.archs), -1, step))
        move = rng.random(len(route)) < self.jitter
        return np.where(move, route + step, route).astype(np.int64)

    # ------------------------------------------------------------------ meta
    def to_meta(self) -> Dict[str, Any]:
        """The checkpoint's ``meta["routes"]``."""
        return {"archs": list(self.archs), "input_sizes": list(self.input_sizes), "thresholds": list(self.thresholds)}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> Optional["Routes"]:
        """The routes of a checkpoint meta (dict), or ``None`` for a single-stem checkpoint."""
        r = meta.get("routes")
        if not r:
            return None
        return cls(tuple(r["archs"]), tuple(r["thresholds"]))

    def with_thresholds(self, thresholds: Optional[Sequence[float]]) -> "Routes":
        """These routes with other thresholds (``None`` keeps them)."""
        return self if thresholds is None else Routes(self.archs, tuple(thresholds), self.jitter)

    def describe(self) -> str:
        edges = ["0"] + [f"{t:g}" for t in self.thresholds] + ["inf"]
        return ", ".join(f"{a} ({lo}-{hi} px]" for a, lo, hi in zip(self.archs, edges[:-1], edges[1:]))


def parse_thresholds(text: str, flag: str = "--route-thresholds") -> Tuple[float, ...]:
    """``"109,212"`` -> ``(109.0, 212.0)``; a ``ValueError`` naming ``flag`` otherwise."""
    try:
        return tuple(float(t) for t in str(text).split(",") if t.strip())
    except ValueError:
        raise ValueError(f"{flag} {text!r}: expected comma-separated sizes in px, e.g. 109,212") from None


__all__ = ["ROUTED_ARCH", "DEFAULT_ROUTE_ARCHS", "Routes", "native_sides", "parse_thresholds"]
