"""What every first stage hands the second stage: boxes, detector class ids and scores per image."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np


@dataclass
class ImageDetections:
    """One image's first-stage output: XYXY boxes in original-image pixels, class ids into ``class_names``."""

    boxes: np.ndarray  # [N, 4] float32
    classes: np.ndarray  # [N] int64
    scores: np.ndarray  # [N] float32

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        if not (len(self.boxes) == len(self.classes) == len(self.scores)):
            raise ValueError(f"{len(self.boxes)} boxes, {len(self.classes)} classes, {len(self.scores)} scores")

    def __len__(self) -> int:
        return len(self.boxes)

    @classmethod
    def empty(cls) -> "ImageDetections":
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0))


@dataclass
class ImageRecord:
    """An input image as the first stages see it: where it came from (file or video frame) and its pixels."""

    file_name: str  # path of the image, or "video.mp4#000123" for a frame
    image: np.ndarray  # HxWx3 uint8 RGB, original resolution
    image_id: Optional[int] = None  # COCO id when known (from annotations), else assigned in order
    extra: dict = field(default_factory=dict)

    @property
    def key(self) -> str:
        """Name used to match files against annotations / detections files: the base name."""
        return os.path.basename(self.file_name)


class FirstStage:
    """A first stage: ``class_names`` and ``detect(records) -> [ImageDetections]`` (one per record)."""

    name = "first_stage"
    class_names: List[str]

    def detect(self, records: Sequence[ImageRecord]) -> List[ImageDetections]:  # pragma: no cover - interface
        raise NotImplementedError
