"""``CropClassifierPredictor``: ``DefaultPredictor`` that also hands the model the original image."""
from __future__ import annotations

import urllib.error
from typing import Any, Dict

import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model

from ..errors import WeightsUnavailableError


def load_detector_weights(model: torch.nn.Module, weights: str, flag: str = "MODEL.WEIGHTS") -> None:
    """``DetectionCheckpointer.load`` with a clear error instead of a bare URLError when offline."""
    try:
        DetectionCheckpointer(model).load(weights)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise WeightsUnavailableError(
            f"cannot download detector weights {weights!r} ({e}); this machine is offline: pass a local weights "
            f"file with {flag}"
        ) from e
    except (FileNotFoundError, AssertionError) as e:  # the checkpointer asserts the file exists
        raise WeightsUnavailableError(f"cannot read detector weights {weights!r} ({e}); check {flag}") from e


class CropClassifierPredictor:
    """One BGR image (HxWx3 uint8, as cv2.imread gives) -> ``{"instances": Instances}``.

    Like ``DefaultPredictor``: loads MODEL.WEIGHTS, resizes per INPUT.MIN/MAX_SIZE_TEST, converts to
    INPUT.FORMAT; in addition the untouched original image travels as ``"original_image"`` so the crop
    classifier sees full resolution. ``metadata.thing_classes`` is the output class space (for Visualizer).
    """

    def __init__(self, cfg, weights_flag: str = "MODEL.WEIGHTS"):
        self.cfg = cfg.clone()
        self.model = build_model(self.cfg)
        self.model.eval()
        if self.cfg.MODEL.WEIGHTS:
            load_detector_weights(self.model, self.cfg.MODEL.WEIGHTS, weights_flag)
        self.aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST)
        self.input_format = cfg.INPUT.FORMAT
        if self.input_format not in ("RGB", "BGR"):
            raise ValueError(f"INPUT.FORMAT must be RGB or BGR, got {self.input_format!r}")
        name = "crop_classifier_output"
        MetadataCatalog.get(name).set(thing_classes=list(self.model.output_class_names))
        self.metadata = MetadataCatalog.get(name)

    @torch.no_grad()
    def __call__(self, original_image: np.ndarray) -> Dict[str, Any]:
        if original_image.ndim != 3 or original_image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 BGR image, got shape {original_image.shape}")
        if self.input_format == "RGB":
            original_image = original_image[:, :, ::-1]
        height, width = original_image.shape[:2]
        image = self.aug.get_transform(original_image).apply_image(original_image)
        inputs = {
            "image": torch.as_tensor(image.astype("float32").transpose(2, 0, 1)),
            "original_image": torch.as_tensor(np.ascontiguousarray(original_image.transpose(2, 0, 1))),
            "height": height,
            "width": width,
        }
        return self.model([inputs])[0]
