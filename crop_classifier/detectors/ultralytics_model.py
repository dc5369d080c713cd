"""``ultralytics:FILE.pt``: an Ultralytics YOLO checkpoint, run by the ``ultralytics`` package itself.

Optional: the package is imported when this first stage is built; without it the error names the extra
(``pip install 'crop_classifier[ultralytics]'``). Ultralytics requires ``opencv-python``, which installs
beside (and clashes with) the ``opencv-python-headless`` the core uses, so the extra is never part of the
default install. Without the package, an exported model runs through ``onnx:FILE.onnx`` instead.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence

from ..errors import BackendUnavailableError, UsageError
from .base import FirstStage, ImageDetections, ImageRecord

EXTRA_HINT = "pip install 'crop_classifier[ultralytics]'"
BOX_TASKS = ("detect", "segment", "pose")  # tasks whose results carry axis-aligned boxes
DEFAULT_SCORE_THRESH = 0.25
NMS_IOU = 0.7
MAX_DET = 300


def import_ultralytics():
    try:
        import ultralytics
    except ImportError as e:
        raise BackendUnavailableError(f"ultralytics: first stages need the ultralytics package ({e}); install "
                                      f"it with: {EXTRA_HINT}") from e
    return ultralytics


class UltralyticsDetector(FirstStage):
    """``ultralytics.YOLO(path).predict`` as a first stage (BGR numpy inputs, as Ultralytics expects).

    Args:
        path: an Ultralytics ``.pt`` checkpoint of a detect, segment or pose model.
        device: where Ultralytics runs the model.
        score_thresh: ``conf`` of ``predict`` (default 0.25); NMS IoU 0.7, at most 300 boxes, as Ultralytics.
    """

    name = "ultralytics"

    def __init__(self, path: str, *, device: str = "cpu", score_thresh: Optional[float] = None):
        ultralytics = import_ultralytics()
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise UsageError(f"ultralytics:{self.path}: no such file")
        try:
            self.model = ultralytics.YOLO(self.path)
        except Exception as e:  # Ultralytics raises several types for foreign files
            raise UsageError(f"ultralytics:{self.path}: not an Ultralytics checkpoint ({type(e).__name__}: {e})") from e
        if self.model.task not in BOX_TASKS:
            raise UsageError(f"ultralytics:{self.path}: a {self.model.task} model; boxes come from "
                             f"{', '.join(BOX_TASKS)} models")
        names = self.model.names
        self.class_names: List[str] = [str(names[i]) for i in range(len(names))] if isinstance(names, dict) \
            else [str(n) for n in names]
        self.device = str(device)
        self.score_thresh = DEFAULT_SCORE_THRESH if score_thresh is None else float(score_thresh)

    def detect(self, records: Sequence[ImageRecord]) -> List[ImageDetections]:
        """Args:
            records: images, HxWx3 uint8 RGB each.
        Returns:
            one ``ImageDetections`` per record, XYXY boxes in the record's pixels.
        """
        if not records:
            return []
        results = self.model.predict([r.image[:, :, ::-1] for r in records], conf=self.score_thresh, iou=NMS_IOU,
                                     max_det=MAX_DET, device=self.device, verbose=False)
        return [ImageDetections(r.boxes.xyxy.float().cpu().numpy(), r.boxes.cls.long().cpu().numpy(),
                                r.boxes.conf.float().cpu().numpy()) for r in results]
