"""Per-track re-inference policy and temporal fusion of a track's classified views.

Re-inference (DeepStream's secondary-classifier rule, plus a size gate): a tracked box is classified

* on first sight (its first view that passes the size gate),
* when its box area has grown by ``>= reinfer_area`` (default 0.2, i.e. 20 %) since its last classified
  view: the object came closer, the view is better,
* when ``reinfer_interval`` frames (default 30; 0 = never) have passed since its last classified view;

and never when the box's short side is under ``min_side`` px (a view too small to trust; 0 = no gate).

Temporal fusion (``vote``): the track's class probabilities ``P`` come from all its classified views ``v``:

* ``weighted`` (default): ``P = sum_v w_v p_v / sum_v w_v`` with the resolution weight
  ``w_v = min(s_v, S) / S``: ``s_v`` is the native side (pixels of the frame) of the square crop the
  classifier reads, context margin included (``max(box w, box h) * (1 + 2 * context)``), ``S`` the
  classifier's input size. A view that fills the classifier's input at native resolution counts fully; an
  upsampled one counts in proportion to the side it really has (Section 9: accuracy follows resolution).
  ``weight_power`` p uses ``w_v ** p`` instead (p = 2: in proportion to the pixels, the area it fills);
* ``mean``: the unweighted mean of the views' probabilities;
* ``last``: the last classified view alone (what a cache of the last result, DeepStream's, shows);
* ``geometric``: the resolution-weighted geometric mean, ``P ∝ exp(sum_v w_v log p_v / sum_v w_v)`` (views as
  independent experts: one confident sharp view outvotes several flat ones).

The track's current class and score then come from ``P`` and this frame's detector class and score through
the second stage's own fusion rule (``crop_classifier.second_stage.fuse``: replace / rescore / filter, same
class map), so a tracked box is fused exactly as a still image's box is, with ``P`` as its probabilities.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np

__all__ = ["VOTE_MODES", "ReinferOptions", "TrackState", "resolution_weight", "reinfer_reason"]

VOTE_MODES = ("weighted", "mean", "last", "geometric")


@dataclass(frozen=True)
class ReinferOptions:
    reinfer_area: float = 0.2  # classify again when the box area grew by this fraction since the last view
    reinfer_interval: int = 30  # ... or after this many frames (0 = never)
    min_side: float = 0.0  # never classify a view whose box short side is under this (px; 0 = no gate)
    vote: str = "weighted"  # weighted | mean | last (module doc)
    weight_power: float = 1.0  # weighted vote: w ** weight_power (1 = the side rule; 2 = the area the view fills)

    def __post_init__(self) -> None:
        if self.vote not in VOTE_MODES:
            raise ValueError(f"vote must be one of {', '.join(VOTE_MODES)}, got {self.vote!r}")
        if not (self.reinfer_area >= 0 and self.reinfer_interval >= 0 and self.min_side >= 0
                and self.weight_power >= 0):
            raise ValueError(f"reinfer_area, reinfer_interval and min_side must be >= 0; got {self}")


def resolution_weight(box, context: float, input_size: int) -> float:
    """``min(native side incl. context, input size) / input size`` of the square crop of ``box`` (XYXY)."""
    w, h = max(float(box[2]) - float(box[0]), 0.0), max(float(box[3]) - float(box[1]), 0.0)
    side = max(w, h) * (1 + 2 * float(context))
    return min(side, float(input_size)) / float(input_size)


def _area(box) -> float:
    return max(float(box[2]) - float(box[0]), 0.0) * max(float(box[3]) - float(box[1]), 0.0)


@dataclass
class TrackState:
    """One track: when it was seen, when and how large it was last classified, and its accumulated votes."""

    track_id: int
    first_frame: int
    last_frame: int
    frames: int = 0
    last_view_frame: Optional[int] = None
    last_view_area: float = 0.0
    views: List[Tuple[int, float, np.ndarray]] = field(default_factory=list)  # (frame, weight, probs) per view
    class_name: Optional[str] = None  # current output class and score (updated every frame)
    score: float = float("nan")
    det_class_name: Optional[str] = None

    def seen(self, frame_index: int) -> None:
        self.last_frame = frame_index
        self.frames += 1

    def add_view(self, frame_index: int, box, probs: np.ndarray, weight: float) -> None:
        self.views.append((int(frame_index), float(weight), np.asarray(probs, np.float64)))
        self.last_view_frame, self.last_view_area = int(frame_index), _area(box)

    def voted(self, vote: str, weight_power: float = 1.0) -> Optional[np.ndarray]:
        """The track's probabilities under ``vote`` (module doc); None before its first classified view."""
        if not self.views:
            return None
        if vote == "last":
            return self.views[-1][2]
        p = np.stack([v[2] for v in self.views])
        if vote == "mean":
            return p.mean(axis=0)
        w = np.array([v[1] for v in self.views]) ** weight_power
        if w.sum() <= 0:
            w = np.ones(len(p))
        if vote == "geometric":  # weighted product of the views' probabilities (independent views), renormalised
            logp = (w[:, None] * np.log(np.clip(p, 1e-6, 1.0))).sum(axis=0) / w.sum()
            q = np.exp(logp - logp.max())
            return q / q.sum()
        return (w[:, None] * p).sum(axis=0) / w.sum()


def reinfer_reason(state: TrackState, box, frame_index: int, o: ReinferOptions) -> str:
    """Why this view of the track is classified now (``first``, ``grew``, ``interval``), or ``""`` (not)."""
    w, h = float(box[2]) - float(box[0]), float(box[3]) - float(box[1])
    if o.min_side > 0 and min(w, h) < o.min_side:
        return ""
    if state.last_view_frame is None:
        return "first"
    if _area(box) >= state.last_view_area * (1 + o.reinfer_area) and o.reinfer_area >= 0 and state.last_view_area > 0:
        return "grew"
    if o.reinfer_interval > 0 and frame_index - state.last_view_frame >= o.reinfer_interval:
        return "interval"
    return ""
