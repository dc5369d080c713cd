"""``MODEL.CROP_CLASSIFIER``: the second stage's keys in a Detectron2 config (nothing else lives here).

``None`` means "not set here" (as Detectron2's own ``SOLVER.WEIGHT_DECAY_BIAS``): with WEIGHTS, the
checkpoint's metadata then decides; a value that is set must agree with the checkpoint or replaces it (crop).
In YAML, leave such a key out or write ``null``.
"""
from detectron2.config import CfgNode as CN

from ..second_stage.config import d2_defaults


def add_crop_classifier_config(cfg: CN) -> CN:
    """Adds ``MODEL.CROP_CLASSIFIER`` to ``cfg`` (in place; also returned). Safe to call twice."""
    if "CROP_CLASSIFIER" in cfg.MODEL:
        return cfg
    _C = cfg.MODEL.CROP_CLASSIFIER = CN()
    # A crop_classifier checkpoint (.pth or .safetensors). Its metadata decides architecture, width, classes,
    # input size, normalisation and crop. Empty: random init (logged), e.g. when MODEL.WEIGHTS is a combined
    # checkpoint that DefaultTrainer wrote, which holds the classifier too.
    _C.WEIGHTS = ""
    # The classifier: architecture (v3_79, v3_151, v3_299, auto), width and class names. With WEIGHTS: None (or
    # empty CLASS_NAMES) = the checkpoint's; a value given must equal the checkpoint's. Without WEIGHTS all three
    # are required: they describe the classifier to build.
    _C.ARCH = None
    # ARCH auto (a routed classifier: each crop at the Section 9 stem that fits its native size; a routed
    # checkpoint, or WEIGHTS "a.pth,b.pth,c.pth": single-stem checkpoints of distinct stems as one routed set):
    # the native box sides (px, context margin included) between the routes, e.g. [109.0, 212.0].
    # Empty: the checkpoint's (or the defaults, the geometric means of neighbouring input sizes).
    _C.ROUTE_THRESHOLDS = []
    _C.WIDTH = None
    _C.CLASS_NAMES = []
    # The detector's class names, in its class-id order. Empty: thing_classes of DATASETS.TEST[0]
    # (else DATASETS.TRAIN[0]) from the MetadataCatalog.
    _C.DETECTOR_CLASS_NAMES = []
    # The second stage's knobs, one key per crop_classifier.second_stage.KNOBS row (the same table as
    # tools/infer.py's flags): CLASS_MAP ([["vehicle", "car,bus,truck"], ["*", "*"]]), RECLASSIFY, CONTEXT and
    # CROP_MODE (None: the checkpoint's), MIN_BOX_SIZE / MAX_BOX_SIZE (px, 0 = no gate), CALIBRATE_GATES,
    # FUSION (replace | rescore | filter), NMS_THRESH, BACKGROUND_DROP, FUSION_FILE (tools/fit_fusion.py's
    # output; "" = none) and MAX_CROPS_PER_FORWARD. See crop_classifier/second_stage/config.py for each.
    for key, default in d2_defaults().items():
        _C[key] = default
    # The classifier's precision: "fp32"; "bf16" (CUDA, or a CPU with AVX-512 BF16/AMX) and "fp16" (CUDA) by
    # autocast; "int8" needs an int8 checkpoint from tools/quantize.py (CPU), which runs int8 whatever this says.
    _C.PRECISION = "fp32"
    return cfg
