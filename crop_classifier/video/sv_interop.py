"""``FusedDetections`` <-> ``supervision.Detections``, so supervision's annotators, zones and line counters work
on the two-stage output.

``to_supervision(fused, track_ids=None, class_names=None)``: ``xyxy`` = boxes, ``class_id`` = output class ids,
``confidence`` = fused scores, ``tracker_id`` = track ids (when given), and ``data`` fields ``det_class``,
``det_score``, ``cls_score``, ``classified``, ``index``, ``cls_probs`` (and ``class_name`` when
``class_names`` are given, the key supervision's label annotator reads). ``from_supervision`` is the inverse
(fields a plain ``sv.Detections`` lacks get neutral values: the detector's class/score = the output's,
no classifier result). Returns ``(fused, track_ids or None)``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import BackendUnavailableError
from ..structures import FusedDetections

__all__ = ["to_supervision", "from_supervision"]


def _sv():
    try:
        import supervision as sv
    except ImportError as e:
        raise BackendUnavailableError("supervision interop needs the 'supervision' package "
                                      "(pip install supervision)") from e
    return sv


def to_supervision(fused: FusedDetections, track_ids: Optional[Tensor] = None,
                   class_names: Optional[Sequence[str]] = None):
    sv = _sv()
    f = fused.to("cpu")
    n = len(f)
    data = {
        "det_class": f.det_classes.numpy().astype(np.int64),
        "det_score": f.det_scores.float().numpy(),
        "cls_score": f.cls_scores.float().numpy(),
        "classified": f.classified.numpy().astype(bool),
        "index": f.index.numpy().astype(np.int64),
        "cls_probs": f.cls_probs.float().numpy().reshape(n, -1),
    }
    if class_names is not None:
        data["class_name"] = np.array([class_names[int(c)] for c in f.classes], dtype=object).astype(str) \
            if n else np.zeros(0, dtype=str)
    tracker_id = None
    if track_ids is not None:
        tracker_id = torch.as_tensor(track_ids).cpu().numpy().astype(np.int64).reshape(-1)
        if len(tracker_id) != n:
            raise ValueError(f"{len(tracker_id)} track ids for {n} boxes")
    return sv.Detections(xyxy=f.boxes.float().numpy().reshape(n, 4), class_id=f.classes.numpy().astype(np.int64),
                         confidence=f.scores.float().numpy(), tracker_id=tracker_id, data=data)


def from_supervision(det, num_classes: Optional[int] = None) -> Tuple[FusedDetections, Optional[Tensor]]:
    n = len(det)
    data = det.data or {}
    classes = torch.as_tensor(det.class_id if det.class_id is not None else np.zeros(n), dtype=torch.long)
    scores = torch.as_tensor(det.confidence if det.confidence is not None else np.ones(n), dtype=torch.float32)
    if "cls_probs" in data:
        probs = torch.as_tensor(np.asarray(data["cls_probs"], np.float32)).reshape(n, -1)
    else:
        probs = torch.zeros(n, int(num_classes or 0))

    def field(key, default, dtype):
        return torch.as_tensor(np.asarray(data[key]), dtype=dtype) if key in data else default

    fused = FusedDetections(
        boxes=torch.as_tensor(np.asarray(det.xyxy, np.float32)).reshape(n, 4), classes=classes, scores=scores,
        det_classes=field("det_class", classes.clone(), torch.long),
        det_scores=field("det_score", scores.clone(), torch.float32), cls_probs=probs,
        cls_scores=field("cls_score", torch.full((n,), float("nan")), torch.float32),
        classified=field("classified", torch.zeros(n, dtype=torch.bool), torch.bool),
        index=field("index", torch.arange(n), torch.long),
    )
    tids = None if det.tracker_id is None else torch.as_tensor(np.asarray(det.tracker_id), dtype=torch.long)
    return fused, tids
