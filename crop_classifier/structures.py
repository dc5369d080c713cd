"""The types that travel along the data flow, shared by every layer (no imports of the package's own modules).

    image -> first stage -> ImageDetections -> crops (CropSpec) -> classifier (ClassifierMeta) -> fusion
          -> FusedDetections

``ImageRecord``: an input image as a first stage sees it. ``ImageDetections``: one image's first-stage boxes.
``CropSpec``: how a box becomes a classifier input (size, context margin, mode), written to and read from
checkpoints and configs. ``ClassifierMeta``: what a checkpoint says about its classifier, preprocessing
included (like torchvision's weights enums carry their transforms). ``FusedDetections``: one image's output.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np
from torch import Tensor

# ImageNet mean/std (RGB in [0, 1]): the default normalisation of every classifier here. The checkpoint's
# meta carries the values it was trained with; inference reads them from there (ClassifierMeta).
IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)

CROP_MODES = ("square", "letterbox")
#: The context margin (fraction of the box side added on each side) of a spec that names none: the training
#: default (``config.py``'s ``CROP.CONTEXT``), so a checkpoint meta without ``crop`` crops as training did.
DEFAULT_CONTEXT = 0.1
DEFAULT_CROP_MODE = "square"


def context_extent(length: Any, context: float) -> Any:
    """The original-image extent a crop covers along one axis: a box side ``length`` (px; float or array)
    widened by ``context`` of it on both sides (before the 1 px floor ``crops.crop_boxes`` applies)."""
    return length * (1 + 2 * float(context))


@dataclass(frozen=True)
class CropSpec:
    """How a box is cut into a classifier input: ``size`` px square, ``context`` margin (fraction of the box
    side added around it), ``mode`` ``square`` (a square around the box) or ``letterbox`` (the box itself,
    aspect kept, padded)."""

    size: int
    context: float = DEFAULT_CONTEXT
    mode: str = DEFAULT_CROP_MODE

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or int(self.size) < 1:
            raise ValueError(f"crop size must be a positive integer, got {self.size!r}")
        object.__setattr__(self, "size", int(self.size))
        if isinstance(self.context, bool) or not isinstance(self.context, (int, float)) \
                or not math.isfinite(self.context) or self.context < 0:
            raise ValueError(f"crop context must be a finite number >= 0, got {self.context!r}")
        object.__setattr__(self, "context", float(self.context))
        if self.mode not in CROP_MODES:
            raise ValueError(f"crop mode must be one of {CROP_MODES}, got {self.mode!r}")

    def with_overrides(self, context: Optional[float] = None, mode: Optional[str] = None) -> "CropSpec":
        """This spec with the given fields replaced (``None`` keeps the field)."""
        return replace(self, context=self.context if context is None else context,
                       mode=self.mode if mode is None else mode)

    def to_meta(self) -> Dict[str, Any]:
        """The checkpoint's ``meta["crop"]`` (the size lives in ``meta["input_size"]``)."""
        return {"context": self.context, "mode": self.mode}

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any]) -> "CropSpec":
        crop = dict(meta.get("crop") or {})
        return cls(int(meta["input_size"]), float(crop.get("context", DEFAULT_CONTEXT)),
                   str(crop.get("mode", DEFAULT_CROP_MODE)))


#: The name of the optional background class: the last classifier class of a checkpoint trained with
#: ``MODEL.BACKGROUND_CLASS`` (recorded as ``meta["background_class"]``); never an output class.
BACKGROUND_CLASS = "__background__"


def object_class_names(meta: Any) -> List[str]:
    """A checkpoint meta's (dict or ``ClassifierMeta``) class names without the background class: the
    classes a dataset's annotations can name."""
    if isinstance(meta, Mapping):
        names, background = list(meta["class_names"]), meta.get("background_class")
    else:
        names, background = list(meta.class_names), meta.background_class
    return names[:-1] if background and names and names[-1] == background else names


@dataclass(frozen=True)
class ClassifierMeta:
    """A checkpoint's ``meta``, typed: the architecture, classes, crop spec and input normalisation.

    ``extra`` keeps any other keys (training provenance, calibration, ...) so a round trip loses nothing.
    """

    arch: str
    class_names: Tuple[str, ...]
    crop: CropSpec
    width: float = 1.0
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    transform_input: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_size(self) -> int:
        return self.crop.size

    @property
    def background_class(self) -> Optional[str]:
        """The background class's name (the last class) when the checkpoint has one, else ``None``."""
        name = self.extra.get("background_class")
        return str(name) if name else None

    @classmethod
    def from_dict(cls, meta: Mapping[str, Any]) -> "ClassifierMeta":
        known = {"arch", "num_classes", "class_names", "input_size", "width", "crop", "mean", "std", "transform_input"}
        return cls(
            arch=str(meta["arch"]), class_names=tuple(str(c) for c in meta["class_names"]),
            crop=CropSpec.from_meta(meta), width=float(meta.get("width", 1.0)),
            mean=tuple(float(v) for v in meta.get("mean", IMAGENET_MEAN)),
            std=tuple(float(v) for v in meta.get("std", IMAGENET_STD)),
            transform_input=bool(meta.get("transform_input", False)),
            extra={k: v for k, v in meta.items() if k not in known},
        )

    def to_dict(self) -> Dict[str, Any]:
        return {
            **dict(self.extra), "arch": self.arch, "num_classes": self.num_classes,
            "class_names": list(self.class_names), "input_size": self.input_size, "width": self.width,
            "transform_input": self.transform_input, "mean": list(self.mean), "std": list(self.std),
            "crop": self.crop.to_meta(),
        }


def frame_name(source: str, index: int) -> str:
    """The name of a video's frame: ``"path/clip.mp4#000012"`` (its key, the base name, is ``clip.mp4#000012``).

    The one naming rule, with and without ``--track``: a detections file names a video frame
    ``clip.mp4#000012`` and an image (a folder sequence's frame too) by its file name ``000012.jpg``; a live
    source (camera, stream URL) by its name the same way (``camera0#000012``)."""
    return f"{source}#{int(index):06d}"


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
class FusedDetections:
    """One image's output. Boxes XYXY in original-image pixels; class ids in the output class space."""

    boxes: Tensor  # [N, 4]
    classes: Tensor  # [N] output class ids
    scores: Tensor  # [N] fused scores
    det_classes: Tensor  # [N] the detector's own class ids
    det_scores: Tensor  # [N] the detector's own scores
    cls_probs: Tensor  # [N, K] classifier probabilities (zeros where not classified)
    cls_scores: Tensor  # [N] classifier probability behind the decision (NaN where not classified)
    classified: Tensor  # [N] bool: the box went through the classifier
    index: Tensor  # [N] position of each box in the first stage's input (for fields the stage does not know)
    # The input boxes the second stage removed, by reason (nms, background, filter): counts, not boxes.
    dropped: Dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def _map(self, fn) -> "FusedDetections":
        return FusedDetections(**{f.name: fn(getattr(self, f.name)) for f in fields(self) if f.name != "dropped"},
                               dropped=dict(self.dropped))

    def select(self, keep: Tensor) -> "FusedDetections":
        """The boxes at ``keep`` (a bool mask or positions); ``dropped`` is carried over unchanged."""
        return self._map(lambda t: t[keep])

    def to(self, device: Any) -> "FusedDetections":
        return self._map(lambda t: t.to(device))

    @property
    def num_classified(self) -> int:
        return int(self.classified.sum())


__all__ = [
    "BACKGROUND_CLASS", "object_class_names", "IMAGENET_MEAN", "IMAGENET_STD", "CROP_MODES", "CropSpec", "ClassifierMeta", "ImageRecord", "ImageDetections",
    "FusedDetections", "frame_name", "DEFAULT_CONTEXT", "DEFAULT_CROP_MODE", "context_extent",
]
