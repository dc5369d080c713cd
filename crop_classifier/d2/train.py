"""Train a Detectron2 detector with ``DefaultTrainer`` on COCO-format datasets (used by ``make demo``)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import DefaultTrainer
from detectron2.utils.logger import setup_logger

from ..coco_io import load_coco, summarize_errors
from ..detectors.detectron2_model import merge_config_file, merge_config_opts
from ..utils.io import atomic_write_text
from .config import add_crop_classifier_config

logger = logging.getLogger(__name__)


def register_coco(name: str, json_file: str, image_root: Optional[str] = None) -> list:
    """Registers a COCO instances file under ``name`` (idempotent); returns its thing_classes.

    ``image_root`` defaults to the JSON's folder; ``file_name`` entries are relative to it.
    """
    json_file = str(json_file)
    if not Path(json_file).is_file():
        raise FileNotFoundError(f"dataset {name}: annotations {json_file}: no such file")
    image_root = str(image_root or Path(json_file).parent)
    # coco_io's rules (ids, categories), checked before anything is registered: Detectron2's loader reads the
    # file again when training, and a malformed entry must not reach it. Class order = load_coco_json's.
    coco = load_coco(json_file)
    if coco.errors:
        raise ValueError(f"dataset {name}: {summarize_errors(json_file, coco.errors)}")
    names = list(coco.class_names)
    if name in DatasetCatalog.list():
        if MetadataCatalog.get(name).get("json_file", None) != json_file:
            raise ValueError(f"dataset {name} is already registered with another file "
                             f"({MetadataCatalog.get(name).get('json_file', None)})")
    else:
        register_coco_instances(name, {}, json_file, image_root)
    MetadataCatalog.get(name).set(thing_classes=names)
    return names


def parse_dataset_arg(arg: str) -> Tuple[str, str, Optional[str]]:
    """``NAME=ANN.json[:IMAGE_ROOT]``."""
    name, sep, rest = arg.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--dataset {arg!r}: expected NAME=ANNOTATIONS.json[:IMAGE_ROOT]")
    json_file, _, root = rest.partition(".json:")
    if root:
        return name, json_file + ".json", root
    return name, rest, None


def detector_cfg(config_file: str, output_dir: str, opts: Sequence[str] = (),
                 datasets: Dict[str, Tuple[str, Optional[str]]] = None):
    cfg = add_crop_classifier_config(get_cfg())
    merge_config_file(cfg, str(config_file), "--config-file")  # errors name the flag, file and key
    merge_config_opts(cfg, list(opts), "config override")
    cfg.OUTPUT_DIR = str(output_dir)
    for name, (json_file, root) in (datasets or {}).items():
        register_coco(name, json_file, root)
    if not cfg.DATASETS.TRAIN:
        raise ValueError(f"{config_file}: DATASETS.TRAIN is empty")
    names = MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).get("thing_classes", None)
    if not names:
        raise ValueError(f"DATASETS.TRAIN[0] {cfg.DATASETS.TRAIN[0]!r} is not registered; pass "
                         f"--dataset {cfg.DATASETS.TRAIN[0]}=ANNOTATIONS.json")
    # The class names travel in the written config, so inference needs no dataset registration.
    cfg.MODEL.CROP_CLASSIFIER.DETECTOR_CLASS_NAMES = list(names)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = len(names)
    return cfg


def train_detector(cfg, resume: bool = False) -> str:
    """Trains with ``DefaultTrainer``; writes OUTPUT_DIR/config.yaml and OUTPUT_DIR/model_final.pth."""
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    setup_logger(output=cfg.OUTPUT_DIR, name="detectron2")
    atomic_write_text(Path(cfg.OUTPUT_DIR) / "config.yaml", cfg.dump())
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return str(Path(cfg.OUTPUT_DIR) / "model_final.pth")
