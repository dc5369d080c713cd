"""``Detections``: one image's boxes as the Python entry takes and returns them, laid out like supervision's.

Fields as ``sv.Detections``: ``xyxy`` ``[N, 4]`` float32 (pixels of the original image), ``class_id`` ``[N]``
int64, ``confidence`` ``[N]`` float32 (or ``None``), ``tracker_id`` ``[N]`` int64 (or ``None``) and ``data``
(``{name: array of N}``). Adapters are classmethods (``from_supervision``, ``from_detectron2``,
``from_torchvision``, ``from_image_detections``); ``to_supervision`` goes back. Only numpy is needed here:
supervision, Detectron2 and torchvision objects are read by duck typing, never imported.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, Optional, Union

import numpy as np

from .errors import BackendUnavailableError
from .structures import ImageDetections

Index = Union[int, slice, np.ndarray, Iterable[int]]


def _array(value: Any, dtype, shape) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, wherever it lives
        value = value.detach().cpu().numpy()
    return np.asarray(value, dtype=dtype).reshape(shape)


@dataclass
class Detections:
    """One image's detections (see module doc).

    Example::

        dets = Detections(xyxy=[[10, 20, 60, 90]], class_id=[0], confidence=[0.8])
        out = stage(image, dets)      # crop_classifier.SecondStage
        out.data["detector_class_id"], out.confidence
    """

    xyxy: np.ndarray
    class_id: Optional[np.ndarray] = None
    confidence: Optional[np.ndarray] = None
    tracker_id: Optional[np.ndarray] = None
    data: Dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.xyxy = _array(self.xyxy, np.float32, (-1, 4))
        n = len(self.xyxy)
        if self.class_id is not None:
            self.class_id = _array(self.class_id, np.int64, (-1,))
        if self.confidence is not None:
            self.confidence = _array(self.confidence, np.float32, (-1,))
        if self.tracker_id is not None:
            self.tracker_id = _array(self.tracker_id, np.int64, (-1,))
        self.data = {str(k): np.asarray(v) for k, v in dict(self.data or {}).items()}
        for name in ("class_id", "confidence", "tracker_id"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise ValueError(f"Detections: {n} boxes but {len(v)} values of {name}")
        for k, v in self.data.items():
            if len(v) != n:
                raise ValueError(f"Detections: {n} boxes but {len(v)} values of data[{k!r}]")

    def __len__(self) -> int:
        return len(self.xyxy)

    def __getitem__(self, index: Index) -> "Detections":
        """The detections at ``index`` (an int, a slice, a bool mask or integer positions)."""
        if isinstance(index, (int, np.integer)):
            index = [int(index)]
        pick = lambda v: None if v is None else v[index]  # noqa: E731
        return Detections(self.xyxy[index], pick(self.class_id), pick(self.confidence), pick(self.tracker_id),
                          {k: v[index] for k, v in self.data.items()})

    @classmethod
    def empty(cls) -> "Detections":
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32))

    # ------------------------------------------------------------------ adapters
    @classmethod
    def from_supervision(cls, d: Any) -> "Detections":
        """From an ``sv.Detections`` (every field it has, ``data`` included; masks are not carried)."""
        return cls(d.xyxy, d.class_id, d.confidence, d.tracker_id, dict(getattr(d, "data", {}) or {}))

    def to_supervision(self) -> Any:
        """This as an ``sv.Detections`` (needs the ``supervision`` package: the ``video`` extra)."""
        try:
            import supervision as sv
        except ImportError:
            raise BackendUnavailableError("Detections.to_supervision needs supervision: pip install "
                                          "'crop_classifier[video]'") from None
        return sv.Detections(xyxy=self.xyxy, class_id=self.class_id, confidence=self.confidence,
                             tracker_id=self.tracker_id, data=dict(self.data))

    @classmethod
    def from_detectron2(cls, instances: Any) -> "Detections":
        """From Detectron2 ``Instances`` with ``pred_boxes``, ``pred_classes`` and ``scores``."""
        return cls(instances.pred_boxes.tensor, instances.pred_classes, instances.scores)

    @classmethod
    def from_torchvision(cls, output: Any) -> "Detections":
        """From one image's output of a torchvision detection model (``{"boxes", "labels", "scores"}``)."""
        return cls(output["boxes"], output["labels"], output["scores"])

    @classmethod
    def from_image_detections(cls, d: ImageDetections) -> "Detections":
        return cls(d.boxes, d.classes, d.scores)

    def to_image_detections(self) -> ImageDetections:
        """The first-stage form (``confidence`` ``None`` reads as 1.0). Raises ValueError without ``class_id``."""
        if self.class_id is None:
            raise ValueError("Detections.class_id is None: the second stage needs each box's detector class")
        scores = self.confidence if self.confidence is not None else np.ones(len(self), np.float32)
        return ImageDetections(self.xyxy, self.class_id, scores)


def is_supervision(d: Any) -> bool:
    """True for an ``sv.Detections`` (checked by its module, so supervision is never imported here)."""
    return type(d).__module__.split(".")[0] == "supervision" and hasattr(d, "xyxy")


__all__ = ["Detections", "is_supervision"]
