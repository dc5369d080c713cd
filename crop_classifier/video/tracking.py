"""Track ids for a frame's boxes, from a kept tracking library (Norfair: Kalman filter + IoU matching).

Why Norfair: supervision >= 0.27 moved ByteTrack to the ``trackers`` package, and every ``trackers`` release
(and ``supervision < 0.27``, through ``opencv-python``) requires numpy >= 2 or a second OpenCV build, which the
pinned Detectron2 stack cannot take; ``norfair`` installs on it unchanged.

Tracking is class-agnostic: the detector's fine class flickers from frame to frame, which is the very thing
the second stage's track vote fixes, so it must not split a track. Before tracking, a class-agnostic NMS
drops the detector's duplicate hypotheses of one object (Detectron2's NMS is per class, so one object can
come out as two boxes of two classes), and boxes under ``min_score`` are not tracked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
import torch

from ..errors import BackendUnavailableError

__all__ = ["TrackerOptions", "BoxTracker", "select_for_tracking"]


@dataclass(frozen=True)
class TrackerOptions:
    min_score: float = 0.3  # detections under it are neither tracked nor output
    nms_iou: float = 0.5  # class-agnostic NMS before tracking (0 = off; Detectron2 per-class NMS uses 0.5)
    max_distance: float = 0.6  # Norfair's IoU distance threshold: a box matches a track at IoU > 0.4
    max_age: int = 8  # frames a track survives without a matching box (Norfair hit_counter_max)


def select_for_tracking(boxes: np.ndarray, scores: np.ndarray, o: TrackerOptions) -> np.ndarray:
    """Indices of the boxes to track: score >= ``min_score``, then class-agnostic NMS, best first."""
    from torchvision.ops import nms

    keep = np.nonzero((scores >= o.min_score) & np.isfinite(boxes).all(axis=1))[0]
    if len(keep) and 0 < o.nms_iou < 1:
        kept = nms(torch.from_numpy(boxes[keep]).float(), torch.from_numpy(scores[keep]).float(), o.nms_iou)
        keep = keep[kept.numpy()]
    return keep.astype(np.int64)


def require_tracker() -> None:
    """Raises ``BackendUnavailableError`` (a usage error) when the tracking library is not installed."""
    try:
        import norfair  # noqa: F401
    except ImportError as e:
        raise BackendUnavailableError(
            "tracking needs the 'norfair' package: pip install 'crop_classifier[video]' (or norfair)") from e


class BoxTracker:
    """``update(boxes [N, 4] XYXY, scores [N]) -> track ids [N]`` (int64, >= 1), one call per frame, in order."""

    def __init__(self, options: TrackerOptions = TrackerOptions()):
        require_tracker()
        from norfair import Tracker

        self.options = options
        self._tracker = Tracker(distance_function="iou", distance_threshold=options.max_distance,
                                hit_counter_max=max(options.max_age, 1), initialization_delay=0)

    def update(self, boxes: np.ndarray, scores: np.ndarray) -> np.ndarray:
        from norfair import Detection

        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        scores = np.asarray(scores, np.float64).reshape(-1)
        dets = [Detection(b.reshape(2, 2), scores=np.array([s, s]), data=i)
                for i, (b, s) in enumerate(zip(boxes, scores))]
        ids = np.zeros(len(dets), np.int64)
        for obj in self._tracker.update(dets):
            d = obj.last_detection
            if d is not None and d.data < len(dets) and dets[d.data] is d:  # matched in this frame
                ids[d.data] = int(obj.id)
        # With initialization_delay=0 every detection starts or continues a track in the same call.
        missing = np.nonzero(ids == 0)[0]
        if len(missing):
            for obj in self._tracker.tracked_objects:
                d = obj.last_detection
                if d is not None and d.data < len(dets) and dets[d.data] is d and obj.id is not None:
                    ids[d.data] = int(obj.id)
        return ids

    @property
    def total_tracks(self) -> int:
        return int(self._tracker.total_object_count)


def track_frame(tracker: BoxTracker, boxes: np.ndarray, scores: np.ndarray,
                o: TrackerOptions) -> Tuple[np.ndarray, np.ndarray]:
    """(indices of the tracked boxes, their track ids)."""
    keep = select_for_tracking(boxes, scores, o)
    return keep, tracker.update(boxes[keep], scores[keep])
