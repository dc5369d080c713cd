"""Detectron2 test configs (import only from tests that need Detectron2)."""
from pathlib import Path

from detectron2.config import get_cfg

from crop_classifier.d2 import add_crop_classifier_config
from classifier_helpers import COLOURS

TINY = Path(__file__).resolve().parents[1] / "configs" / "d2" / "tiny_R18_FPN_random.yaml"


def tiny_cfg(*opts):
    """The tiny random-weight R-18 FPN detector (classes ``thing``, ``other``) with a crop classifier of
    ``COLOURS`` that ``thing`` maps to; ``opts``: more ``KEY, VALUE`` pairs, merged last."""
    cfg = add_crop_classifier_config(get_cfg())
    cfg.merge_from_file(str(TINY))
    cfg.merge_from_list([
        "MODEL.META_ARCHITECTURE", "CropClassifierRCNN",
        "MODEL.ROI_HEADS.NUM_CLASSES", 2,
        "MODEL.CROP_CLASSIFIER.DETECTOR_CLASS_NAMES", ["thing", "other"],
        "MODEL.CROP_CLASSIFIER.CLASS_NAMES", COLOURS,
        "MODEL.CROP_CLASSIFIER.CLASS_MAP", [["thing", "red,green,blue"]],
        *opts,
    ])
    return cfg
