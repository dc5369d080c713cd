"""``torchvision:NAME``: any of torchvision's detection builders as the first stage.

``NAME`` is one of ``torchvision.models.list_models(module=torchvision.models.detection)`` (Faster R-CNN,
RetinaNet, FCOS, SSD, SSDLite, Mask/Keypoint R-CNN: their boxes). Weights: the builder's weights enum
(``DEFAULT``, loaded by torchvision's own code through the torch hub cache), or a local state dict
(``weights=FILE``, loaded with ``weights_only=True`` into the builder made with ``weights=None``). Offline
without a cached download, the error names ``--detector-weights``.

Class names come from the weights enum's ``meta["categories"]`` (known without downloading): torchvision's
COCO list has 91 entries, index 0 ``__background__`` and ten ``"N/A"`` placeholders for the COCO ids that
have no category. The class map works by name and needs unique names, so each placeholder is exposed as
``"N/A_<id>"`` (``"N/A_12"``, ``"N/A_26"``, ...); any other repeated name gets the same ``_<id>`` suffix.
The model's labels index that list directly, so COCO names (``person``, ``car``, ...) map onto a classifier's
classes of the same name.
"""
from __future__ import annotations

import ast
import contextlib
import io
import logging
import os
import urllib.error
import urllib.parse
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from ..errors import CheckpointError, UsageError, WeightsUnavailableError
from .base import FirstStage, ImageDetections, ImageRecord

WEIGHTS_FLAG = "--detector-weights"

logger = logging.getLogger(__name__)


def detection_model_names() -> List[str]:
    """The names ``torchvision.models.get_model`` builds as detection models (sorted)."""
    import torchvision
    from torchvision.models import detection

    return sorted(torchvision.models.list_models(module=detection))


def check_model_name(name: str) -> str:
    """``name`` if it is a torchvision detection builder, else ``UsageError`` listing the valid ones."""
    names = detection_model_names()
    if name not in names:
        raise UsageError(f"torchvision:{name} is not a torchvision detection model; detection models: "
                         f"{', '.join(names)}")
    return name


def unique_class_names(categories: Sequence[str]) -> List[str]:
    """``categories`` with every repeated name (torchvision's ``"N/A"`` placeholders) given its index:
    ``"N/A"`` at index 12 becomes ``"N/A_12"``. Unique names are kept as they are.

    Args:
        categories: class names in label order, possibly repeated.
    Returns:
        the same number of names, all distinct.
    """
    names = [str(c) for c in categories]
    counts = {n: names.count(n) for n in names}
    out = [f"{n}_{i}" if counts[n] > 1 else n for i, n in enumerate(names)]
    if len(set(out)) != len(out):  # a suffixed name that collides with a real one
        raise ValueError(f"cannot make the class names unique: {names}")
    return out


def builder_kwargs(opts: Sequence[str]) -> Dict[str, Any]:
    """``--detector-opts`` KEY VALUE pairs as builder keyword arguments (values as Python literals when they
    parse, e.g. ``min_size 512 box_detections_per_img 200``), else as strings."""
    if len(opts) % 2:
        raise UsageError(f"--detector-opts takes KEY VALUE pairs, got {len(opts)} words")
    out: Dict[str, Any] = {}
    for key, value in zip(opts[::2], opts[1::2]):
        try:
            out[str(key)] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[str(key)] = value
    return out


def set_score_thresh(model: torch.nn.Module, score_thresh: float) -> None:
    """The model's own box score threshold: ``roi_heads.score_thresh`` (R-CNNs), ``score_thresh`` (RetinaNet,
    FCOS, SSD)."""
    if hasattr(model, "roi_heads"):
        model.roi_heads.score_thresh = float(score_thresh)
    elif hasattr(model, "score_thresh"):
        model.score_thresh = float(score_thresh)
    else:
        raise UsageError(f"{type(model).__name__} has no box score threshold to set")


def load_local_state_dict(path: str, flag: str = WEIGHTS_FLAG) -> Dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save`` (plain, or under a ``"model"`` / ``"state_dict"`` key), read
    with ``weights_only=True``."""
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path}: no such file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle/zip errors of a foreign or unsafe file
        raise CheckpointError(f"{flag} {path}: not a torch state dict ({type(e).__name__}: {e})") from e
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{flag} {path}: not a state dict of tensors")
    return obj


def _cached(weights_enum_value) -> bool:
    """Whether torch hub's cache already holds this weights file (then no network is needed)."""
    name = os.path.basename(urllib.parse.urlparse(weights_enum_value.url).path)
    return os.path.isfile(os.path.join(torch.hub.get_dir(), "checkpoints", name))


def _pretrained(name: str, default, download: bool, kwargs: Dict[str, Any]) -> torch.nn.Module:
    import torchvision

    hint = f"pass a local state dict with {WEIGHTS_FLAG} FILE"
    if not download and not _cached(default):
        raise WeightsUnavailableError(f"torchvision:{name}: weights {default} are not in the torch hub cache "
                                      f"({torch.hub.get_dir()}) and downloading is off; {hint}")
    said = io.StringIO()  # torch hub's "Downloading: URL" line: kept out of an offline failure's one-line error
    try:
        with contextlib.redirect_stderr(said):
            model = torchvision.models.get_model(name, weights=default, **{"progress": False, **kwargs})
        if said.getvalue().strip():
            logger.info("%s", said.getvalue().strip())
        return model
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as e:
        raise WeightsUnavailableError(f"torchvision:{name}: cannot download weights {default} from {default.url} "
                                      f"({e}); this machine is offline: {hint}") from e
    except RuntimeError as e:  # torch hub's hash check of a truncated download
        raise WeightsUnavailableError(f"torchvision:{name}: weights {default} could not be read ({e}); {hint}") from e


def _from_file(name: str, path: str, num_classes: int, kwargs: Dict[str, Any]) -> torch.nn.Module:
    import torchvision

    state = load_local_state_dict(path)
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, num_classes=num_classes, **kwargs)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise CheckpointError(f"{WEIGHTS_FLAG} {path}: does not fit torchvision:{name} with {num_classes} classes "
                              f"({' '.join(first[:3])[:400]})") from e
    return model


class TorchvisionDetector(FirstStage):
    """A torchvision detection model run batched on ``device`` under ``torch.inference_mode``.

    Args:
        model_name: a name of ``detection_model_names()``.
        weights: a local state dict file; ``None``: the weights enum's ``DEFAULT`` (torch hub cache or download).
        device: where the model runs (the classifier's device); images go there as uint8.
        score_thresh: the model's own box score threshold (``None``: the builder's default).
        class_names: the model's classes in label order, background entry included (a model of your own,
            with ``weights``); ``None``: the weights enum's categories (see ``unique_class_names``).
        model_kwargs: extra builder arguments (``min_size``, ``max_size``, ``box_detections_per_img``, ...).
        download: ``False``: never touch the network (the weights must be in the hub cache or a file).
    """

    name = "torchvision"

    def __init__(self, model_name: str, weights: Optional[str] = None, *, device: str = "cpu",
                 score_thresh: Optional[float] = None, class_names: Optional[Sequence[str]] = None,
                 model_kwargs: Optional[Dict[str, Any]] = None, download: bool = True):
        import torchvision

        self.model_name = check_model_name(model_name)
        default = torchvision.models.get_model_weights(model_name).DEFAULT
        categories = list(class_names) if class_names else list(default.meta["categories"])
        self.class_names = unique_class_names(categories)
        kwargs = dict(model_kwargs or {})
        if weights:
            model = _from_file(model_name, str(weights), len(categories), kwargs)
        elif class_names and len(class_names) != len(default.meta["categories"]):
            raise UsageError(f"torchvision:{model_name}: {len(class_names)} class names, but the pretrained "
                             f"weights have {len(default.meta['categories'])}; pass {WEIGHTS_FLAG} for a model of "
                             "your own")
        else:
            model = _pretrained(model_name, default, download, kwargs)
        if score_thresh is not None:
            set_score_thresh(model, score_thresh)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()

    def detect(self, records: Sequence[ImageRecord]) -> List[ImageDetections]:
        """Args:
            records: images, HxWx3 uint8 RGB each (sizes may differ).
        Returns:
            one ``ImageDetections`` per record: XYXY boxes in the record's pixels, labels into ``class_names``.
        """
        if not records:
            return []
        with torch.inference_mode():
            images = [torch.from_numpy(np.ascontiguousarray(r.image)).to(self.device).permute(2, 0, 1).float() / 255.0
                      for r in records]
            outputs = self.model(images)
        return [ImageDetections(o["boxes"].float().cpu().numpy(), o["labels"].cpu().numpy(),
                                o["scores"].float().cpu().numpy()) for o in outputs]
