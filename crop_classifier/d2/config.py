"""``MODEL.CROP_CLASSIFIER``: the second stage's keys in a Detectron2 config."""
from detectron2.config import CfgNode as CN


def add_crop_classifier_config(cfg: CN) -> CN:
    """Adds ``MODEL.CROP_CLASSIFIER`` to ``cfg`` (in place; also returned). Safe to call twice."""
    if "CROP_CLASSIFIER" in cfg.MODEL:
        return cfg
    _C = cfg.MODEL.CROP_CLASSIFIER = CN()
    # Classifier: architecture (v3_79, v3_151, v3_299) and width; both must agree with WEIGHTS' metadata.
    _C.ARCH = "v3_79"
    _C.WIDTH = 1.0
    # A crop_classifier checkpoint (.pth or .safetensors). Its metadata decides classes, input size,
    # normalisation and crop semantics. Empty: random init (logged), e.g. when MODEL.WEIGHTS is a combined
    # checkpoint that DefaultTrainer wrote, which holds the classifier too.
    _C.WEIGHTS = ""
    # Classifier class names. Needed without WEIGHTS; with WEIGHTS they must equal the checkpoint's (or be empty).
    _C.CLASS_NAMES = []
    # The detector's class names, in its class-id order. Empty: thing_classes of DATASETS.TEST[0]
    # (else DATASETS.TRAIN[0]) from the MetadataCatalog.
    _C.DETECTOR_CLASS_NAMES = []
    # Detector class -> classifier classes, by name: [["vehicle", "car,bus,truck"], ["person", "*"]].
    # "*" = every classifier class. Without an entry a detector class maps to the classifier class of the
    # same name; detector classes with neither pass through untouched.
    _C.CLASS_MAP = []
    # Detector classes to re-classify (names); empty = every mapped class.
    _C.RECLASSIFY = []
    # Context margin around each box (fraction of its size) and crop mode ("square" | "letterbox").
    # Negative / empty: what the checkpoint was trained with (meta "crop"), so inference crops like training.
    _C.CONTEXT = -1.0
    _C.CROP_MODE = ""
    # Size gates in original-image pixels: boxes whose shorter side is under MIN_BOX_SIZE or whose longer
    # side is over MAX_BOX_SIZE pass through untouched. 0 = no gate.
    _C.MIN_BOX_SIZE = 0.0
    _C.MAX_BOX_SIZE = 0.0
    # "replace" | "rescore" | "filter" (see crop_classifier.pipeline).
    _C.FUSION = "replace"
    # Crops per classifier forward (bounds memory; all crops of a batch are classified in such chunks).
    _C.MAX_CROPS_PER_FORWARD = 64
    # Class-wise NMS after "replace" (two detector hypotheses of one object can become the same class).
    # 0 disables it.
    _C.NMS_THRESH = 0.5
    return cfg


def validate_crop_classifier_config(cfg: CN) -> None:
    """Value checks of ``MODEL.CROP_CLASSIFIER`` (run when the meta-architecture is built); each error names the key."""
    from ..models import ARCHITECTURES
    from ..pipeline import FUSION_MODES

    c = cfg.MODEL.CROP_CLASSIFIER
    for key, ok, expected in (
        ("ARCH", c.ARCH in ARCHITECTURES, "one of " + ", ".join(sorted(ARCHITECTURES))),
        ("WIDTH", c.WIDTH > 0, "> 0"),
        ("FUSION", c.FUSION in FUSION_MODES, "one of " + ", ".join(FUSION_MODES)),
    ):
        if not ok:
            raise ValueError(f"config key MODEL.CROP_CLASSIFIER.{key}: got {c[key]!r}, expected {expected}")
