"""``CropClassifierPredictor``: Detectron2's ``DefaultPredictor`` that also hands the model the original image."""
from __future__ import annotations

from typing import Any, Dict, Sequence

import numpy as np
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor

from ..detectors.detectron2_model import load_detector_weights, predictor_inputs, without_weights


class PartialCheckpointer(DetectionCheckpointer):
    """Reports as missing only the parameters nothing else provides: those under ``preloaded`` prefixes (the
    classifier, loaded from MODEL.CROP_CLASSIFIER.WEIGHTS) are not gaps of a detector-only MODEL.WEIGHTS."""

    def __init__(self, model: torch.nn.Module, preloaded: Sequence[str] = (), **kwargs: Any):
        super().__init__(model, **kwargs)
        self.preloaded = tuple(preloaded)

    def _log_incompatible_keys(self, incompatible) -> None:
        missing = [k for k in incompatible.missing_keys if not k.startswith(self.preloaded)]
        super()._log_incompatible_keys(incompatible._replace(missing_keys=missing))


class CropClassifierPredictor(DefaultPredictor):
    """One BGR image (HxWx3 uint8, as cv2.imread gives) -> ``{"instances": Instances}``.

    ``DefaultPredictor`` (MODEL.WEIGHTS, resize per INPUT.MIN/MAX_SIZE_TEST, INPUT.FORMAT); in addition the
    untouched original image travels as ``"original_image"`` so the crop classifier sees full resolution.
    ``metadata.thing_classes`` is the output class space (for Visualizer). Weights that cannot be read raise
    ``WeightsUnavailableError`` naming ``weights_flag``.
    """

    def __init__(self, cfg, weights_flag: str = "MODEL.WEIGHTS"):
        super().__init__(without_weights(cfg))
        self.cfg.MODEL.WEIGHTS = cfg.MODEL.WEIGHTS
        if cfg.MODEL.WEIGHTS:
            preloaded = ("second_stage.",) if getattr(self.model, "classifier_preloaded", False) else ()
            load_detector_weights(self.model, cfg.MODEL.WEIGHTS, weights_flag, PartialCheckpointer(self.model, preloaded))
        name = "crop_classifier_output"
        MetadataCatalog.get(name).set(thing_classes=list(self.model.output_class_names))
        self.metadata = MetadataCatalog.get(name)

    def __call__(self, original_image: np.ndarray) -> Dict[str, Any]:
        if original_image.ndim != 3 or original_image.shape[2] != 3:
            raise ValueError(f"expected an HxWx3 BGR image, got shape {original_image.shape}")
        inputs = predictor_inputs(self, original_image)
        original = original_image if self.input_format == "BGR" else original_image[:, :, ::-1]
        inputs["original_image"] = torch.as_tensor(np.ascontiguousarray(original.transpose(2, 0, 1)))
        with torch.no_grad():
            return self.model([inputs])[0]
