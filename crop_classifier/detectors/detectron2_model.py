"""Detectron2 first stage: the model zoo's Faster R-CNN, or a config file of your own.

Detectron2 is optional: it is imported inside the functions here, when a Detectron2 first stage is built.
This module never needs the ``crop_classifier.d2`` plugin (the plugin builds on it): a config written for the
plugin loads as a plain detector, its ``MODEL.CROP_CLASSIFIER`` subtree accepted as it is.
"""
from __future__ import annotations

import copy
import os
import urllib.error
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import yaml

from ..errors import ConfigError, UsageError, WeightsUnavailableError
from .base import FirstStage, ImageDetections, ImageRecord
from .detectron2_backbone import register_backbones

MODEL_ZOO_CONFIG = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"


@dataclass(frozen=True)
class Detectron2Flags:
    """The names the first stage's usage errors give: the command-line flags of tools/infer.py by default."""

    config: str = "--detector-config"
    weights: str = "--detector-weights"
    opts: str = "--detector-opts"


def detectron2_config(config_file: Optional[str] = None, opts: Sequence[str] = (),
                      flags: Detectron2Flags = Detectron2Flags()):
    """A Detectron2 config (``None`` = the model zoo Faster R-CNN) with ``opts`` merged.

    Problems of the file or of ``opts`` (missing file, unknown key, bad value, bad YAML) raise ``UsageError``
    naming the flag, the file and the key, instead of Detectron2's assertion.
    """
    from detectron2 import model_zoo
    from detectron2.config import CfgNode, get_cfg

    cfg = get_cfg()
    # Configs written for the plugin (tools/train_detector.py's config.yaml included) carry this subtree;
    # the first stage reads only DETECTOR_CLASS_NAMES from it.
    cfg.MODEL.CROP_CLASSIFIER = CfgNode(new_allowed=True)
    register_backbones()  # the demo's narrow R-18 FPN
    if config_file is None:
        cfg.merge_from_file(model_zoo.get_config_file(MODEL_ZOO_CONFIG))
        cfg.MODEL.WEIGHTS = model_zoo.get_checkpoint_url(MODEL_ZOO_CONFIG)
    else:
        merge_config_file(cfg, str(config_file), flags.config)
    merge_config_opts(cfg, opts, flags.opts)
    return cfg


# What Detectron2's config merging raises for a user's mistake (yacs asserts unknown keys in a list, raises
# KeyError for them in a file, ValueError for a value of the wrong type).
_CONFIG_ERRORS = (AssertionError, KeyError, ValueError, TypeError, yaml.YAMLError, OSError, RecursionError)


def _reason(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "its _BASE_ chain includes itself"
    text = " ".join(str(e.args[0] if isinstance(e, KeyError) and e.args else e).split())
    return text or type(e).__name__


def merge_config_file(cfg, path: str, flag: str = "--detector-config") -> None:
    if not os.path.isfile(path):
        raise UsageError(f"{flag} {path}: no such file")
    try:
        cfg.merge_from_file(path)
    except _CONFIG_ERRORS as e:
        raise ConfigError(f"{flag} {path}: {_reason(e)}") from e


def merge_config_opts(cfg, opts: Sequence[str], flag: str = "--detector-opts") -> None:
    if len(opts) % 2:
        raise UsageError(f"{flag} takes KEY VALUE pairs, got {len(opts)} words")
    try:
        cfg.merge_from_list(list(opts))
    except _CONFIG_ERRORS as e:
        raise ConfigError(f"{flag}: {_reason(e)}") from e


def detector_class_names(cfg, class_names: Optional[Sequence[str]] = None) -> List[str]:
    """The detector's class names in class-id order: ``class_names``, else the config's
    ``MODEL.CROP_CLASSIFIER.DETECTOR_CLASS_NAMES`` (tools/train_detector.py writes them there), else the
    ``thing_classes`` of DATASETS.TEST, then DATASETS.TRAIN, in Detectron2's MetadataCatalog."""
    from detectron2.data import MetadataCatalog

    names = list(class_names or cfg.MODEL.get("CROP_CLASSIFIER", {}).get("DETECTOR_CLASS_NAMES", None) or [])
    for ds in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        if names:
            break
        names = list(MetadataCatalog.get(ds).get("thing_classes", None) or [])
    if not names:
        raise ConfigError(
            "MODEL.CROP_CLASSIFIER.DETECTOR_CLASS_NAMES is empty and neither DATASETS.TEST nor DATASETS.TRAIN has "
            "thing_classes in the MetadataCatalog: the class map works by name, so set the detector's class names"
        )
    if len(names) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise ConfigError(
            f"{len(names)} detector class names but MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES}"
        )
    return names


def load_detector_weights(model: torch.nn.Module, weights: str, flag: str = "MODEL.WEIGHTS",
                          checkpointer: Any = None) -> None:
    """``DetectionCheckpointer(model).load(weights)`` (or ``checkpointer``'s) with an error naming ``flag``
    instead of a bare URLError when offline or an assertion when the file is missing."""
    from detectron2.checkpoint import DetectionCheckpointer

    checkpointer = checkpointer if checkpointer is not None else DetectionCheckpointer(model)
    try:
        checkpointer.load(weights)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
        raise WeightsUnavailableError(
            f"cannot download detector weights {weights!r} ({e}); this machine is offline: pass a local weights "
            f"file with {flag}"
        ) from e
    except (FileNotFoundError, AssertionError) as e:  # the checkpointer asserts the file exists
        raise WeightsUnavailableError(f"cannot read detector weights {weights!r} ({e}); check {flag}") from e


def without_weights(cfg):
    """A copy of ``cfg`` with MODEL.WEIGHTS empty: ``DefaultPredictor`` then builds the model and leaves the
    loading to ``load_detector_weights`` (whose errors name the flag). Works on a frozen config, as
    ``DefaultPredictor`` does."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.WEIGHTS = ""
    return cfg


def default_predictor(cfg, weights_flag: str = "MODEL.WEIGHTS"):
    """Detectron2's ``DefaultPredictor`` for ``cfg``, its MODEL.WEIGHTS loaded by ``load_detector_weights``."""
    from detectron2.engine import DefaultPredictor

    predictor = DefaultPredictor(without_weights(cfg))
    predictor.cfg.MODEL.WEIGHTS = cfg.MODEL.WEIGHTS
    if cfg.MODEL.WEIGHTS:
        load_detector_weights(predictor.model, cfg.MODEL.WEIGHTS, weights_flag)
    return predictor


def _hand_back(batch: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return batch


def predictor_inputs(predictor, image_bgr: np.ndarray) -> Dict[str, Any]:
    """The model input ``DefaultPredictor.__call__`` makes of one BGR HxWx3 image (INPUT.FORMAT, resize to
    INPUT.MIN/MAX_SIZE_TEST, float CHW, height/width), made by that very code rather than restated: it runs on
    a shallow copy of ``predictor`` whose model hands its batch back. Callers batch these inputs themselves."""
    from detectron2.engine import DefaultPredictor

    view = copy.copy(predictor)
    view.model = _hand_back  # DefaultPredictor.__call__ returns self.model([inputs])[0]
    return DefaultPredictor.__call__(view, image_bgr)


class Detectron2Detector(FirstStage):
    """Runs a ``GeneralizedRCNN`` (plain detector; the second stage is applied by the caller) through a
    ``DefaultPredictor``'s model and preprocessing, a batch of images per forward.

    ``weights``: a local file; without it ``MODEL.WEIGHTS`` of the config (the model zoo URL for the zoo
    model). Offline, a URL fails with an error naming ``flags.weights``. ``class_names``: the detector's,
    in class-id order (default: see ``detector_class_names``).
    """

    name = "faster_rcnn"

    def __init__(
        self,
        config_file: Optional[str] = None,
        weights: Optional[str] = None,
        *,
        device: str = "cpu",
        score_thresh: Optional[float] = None,
        class_names: Optional[Sequence[str]] = None,
        opts: Sequence[str] = (),
        flags: Detectron2Flags = Detectron2Flags(),
    ):
        cfg = detectron2_config(config_file, opts, flags)
        if cfg.MODEL.META_ARCHITECTURE == "CropClassifierRCNN":
            cfg.MODEL.META_ARCHITECTURE = "GeneralizedRCNN"  # the caller runs the second stage itself
        if weights:
            cfg.MODEL.WEIGHTS = str(weights)
        if score_thresh is not None:
            cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = float(score_thresh)
        cfg.MODEL.DEVICE = str(device)
        if not cfg.MODEL.WEIGHTS:
            raise UsageError(f"no detector weights: {config_file} sets no MODEL.WEIGHTS; pass {flags.weights} FILE")
        self.class_names = detector_class_names(cfg, class_names)
        self.predictor = default_predictor(cfg, flags.weights)

    @property
    def cfg(self):
        return self.predictor.cfg

    @property
    def model(self) -> torch.nn.Module:
        return self.predictor.model

    @property
    def aug(self):
        return self.predictor.aug

    @property
    def input_format(self) -> str:
        return self.predictor.input_format

    def model_input(self, record: ImageRecord) -> Dict[str, Any]:
        """The model's input for one record (records hold RGB; DefaultPredictor takes BGR)."""
        return predictor_inputs(self.predictor, record.image[:, :, ::-1])

    def detect(self, records: Sequence[ImageRecord]) -> List[ImageDetections]:
        if not records:
            return []
        inputs = [self.model_input(r) for r in records]
        with torch.no_grad():
            outputs = self.model(inputs)
        out = []
        for o in outputs:
            inst = o["instances"].to("cpu")
            out.append(ImageDetections(inst.pred_boxes.tensor.numpy(), inst.pred_classes.numpy(), inst.scores.numpy()))
        return out
