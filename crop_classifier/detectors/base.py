"""What every first stage hands the second stage: boxes, detector class ids and scores per image."""
from __future__ import annotations

from typing import List, Sequence

from ..structures import ImageDetections, ImageRecord  # noqa: F401  (re-exported)


class FirstStage:
    """A first stage: ``class_names`` and ``detect(records) -> [ImageDetections]`` (one per record)."""

    name = "first_stage"
    class_names: List[str]

    def detect(self, records: Sequence[ImageRecord]) -> List[ImageDetections]:  # pragma: no cover - interface
        raise NotImplementedError
