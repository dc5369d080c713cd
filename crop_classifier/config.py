"""Training/evaluation configuration: an fvcore ``CfgNode`` (Detectron2-style YAML with ``_BASE_``).

``get_cfg()`` returns the defaults, which are the paper's recipe (Szegedy et al. 2016, Section 8) for a
full-size run; ``load_config(file, opts)`` merges a YAML file and ``KEY VALUE`` overrides on top and
freezes the result. Unknown keys are errors that name the key (and the file they came from).

Dataset names (``DATASETS.TRAIN`` / ``DATASETS.TEST`` entries):

* ``coco:ANN_JSON:IMAGE_DIR`` -- COCO instance annotations and their image folder; every non-crowd box
  becomes one crop sample.
* ``synthetic:DIR:N:SEED`` -- N synthetic scenes generated with ``SEED`` into ``DIR`` (only when
  ``DIR`` does not hold them yet), then read as the COCO dataset they are written as. Scene ``i`` depends
  on ``(SEED, basename(DIR), i)``, so ``.../train`` and ``.../val`` never share scenes.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Union

import yaml
from fvcore.common.config import BASE_KEY, CfgNode

from .crops import DEFAULT_CONTEXT
from .errors import ConfigError
from .models.registry import ALL_ARCHITECTURES
from .models.routing import ROUTED_ARCH, Routes
from .structures import CROP_MODES, CropSpec


def get_cfg() -> CfgNode:
    """The default configuration (a fresh copy each call)."""
    _C = CfgNode()

    _C.MODEL = CfgNode()
    # v3_79 | v3_151 | v3_299 | auto (one weight set, each crop fed at the stem its native size routes to)
    _C.MODEL.ARCH = "v3_79"
    _C.MODEL.WIDTH = 1.0  # channel multiplier; 1.0 is the paper's network
    # 0: derived from the class names (DATASETS.CLASS_NAMES, else the first training dataset's categories).
    _C.MODEL.NUM_CLASSES = 0
    _C.MODEL.AUX_LOGITS = True  # BN-auxiliary head on the 17x17 grid (paper Section 7)
    _C.MODEL.AUX_LOSS_WEIGHT = 0.4
    # Optional local ImageNet checkpoint (torchvision inception_v3 state dict or our checkpoint format);
    # the 1000-class FC layers are skipped when NUM_CLASSES differs.
    _C.MODEL.IMAGENET_WEIGHTS = ""
    _C.MODEL.SYNC_BN = False  # convert BatchNorm to SyncBatchNorm when training on several processes
    # NHWC activations: faster on GPU, and about 3x faster on CPU for these small-channel convs (oneDNN).
    _C.MODEL.CHANNELS_LAST = True
    # Append a background class ("__background__", the last class; meta["background_class"]) trained on
    # boxes that overlap no object, so the second stage can say "not an object" (second_stage/fusion.py).
    _C.MODEL.BACKGROUND_CLASS = False
    # MODEL.ARCH auto: the routes (stems, smallest input first) and the native sides (px, the box's longer side
    # with its context margin) between consecutive routes; empty: geometric means of neighbouring input sizes.
    _C.MODEL.ROUTES = CfgNode()
    _C.MODEL.ROUTES.ARCHS = ("v3_79", "v3_151", "v3_299")
    _C.MODEL.ROUTES.THRESHOLDS = ()

    _C.CROP = CfgNode()
    _C.CROP.CONTEXT = DEFAULT_CONTEXT  # margin around each box, as a fraction of its side
    _C.CROP.MODE = "square"  # square | letterbox

    _C.INPUT = CfgNode()
    _C.INPUT.SIZE = 0  # crop side in pixels; 0: the architecture's native input size (79/151/299)
    # MODEL.ARCH auto: the probability that a training crop is fed at a neighbouring route's size instead of its
    # own (redrawn each epoch), so every route also sees crops from beyond its thresholds.
    _C.INPUT.ROUTE_JITTER = 0.2
    _C.INPUT.AUGMENT = True  # flips, colour and scale/aspect jitter on training crops
    # Blur or downscale-upscale a third of the training crops (large objects then look like small ones).
    # Off where the class lives in fine detail that a 4x downscale erases (e.g. the synthetic marks).
    _C.INPUT.AUGMENT_LOW_RESOLUTION = True
    # Training boxes are jittered to a random box with at least this IoU with the ground truth, so the
    # classifier sees boxes like a detector's; 0 disables the jitter.
    _C.INPUT.JITTER_IOU = 0.7
    # With MODEL.BACKGROUND_CLASS: random background boxes per training object (drawn anew each epoch), each
    # with IoU below BACKGROUND_MAX_IOU with every object of its image.
    _C.INPUT.BACKGROUND_RATIO = 0.25
    _C.INPUT.BACKGROUND_MAX_IOU = 0.3
    # DATASETS.DETECTIONS: matching thresholds, and detector crops per ground-truth crop (drawn once, seeded).
    _C.INPUT.DETECTION_POS_IOU = 0.5
    _C.INPUT.DETECTION_NEG_IOU = 0.3
    _C.INPUT.DETECTION_RATIO = 1.0

    _C.DATASETS = CfgNode()
    _C.DATASETS.TRAIN = ()
    _C.DATASETS.TEST = ()
    # Fixed class order; empty: the categories of the first training dataset, in their file order.
    _C.DATASETS.CLASS_NAMES = ()
    # Boxes whose shorter side is below this (pixels, in the original image) are dropped from training /
    # from evaluation.
    _C.DATASETS.MIN_BOX_SIZE_TRAIN = 0.0
    _C.DATASETS.MIN_BOX_SIZE_TEST = 0.0
    # A first stage's detections on the training images (COCO results with file_name, e.g. the
    # detector_predictions.json of `tools/infer.py --input TRAIN_IMAGES`), matched to the images by base name.
    # Each box with IoU >= INPUT.DETECTION_POS_IOU with a training object becomes a crop of its class; with
    # MODEL.BACKGROUND_CLASS, one with IoU < INPUT.DETECTION_NEG_IOU with every object becomes background (and
    # no random background boxes are drawn); the rest are ignored (data/detection_crops.py).
    _C.DATASETS.DETECTIONS = ()

    _C.DATALOADER = CfgNode()
    _C.DATALOADER.NUM_WORKERS = 2
    # Training batches hold crops of as few images as possible, so each image is decoded about once per epoch
    # (GPU: decoding is the bottleneck). False: boxes shuffled over the epoch, uncorrelated batches (small
    # CPU batches train far better so; each box then decodes its image).
    _C.DATALOADER.GROUP_BY_IMAGE = True

    _C.SOLVER = CfgNode()
    _C.SOLVER.OPTIMIZER = "rmsprop"  # rmsprop | sgd
    # Learning rate for a global batch of REFERENCE_BATCH_SIZE; the rate used is scaled linearly:
    # lr = BASE_LR * IMS_PER_BATCH / REFERENCE_BATCH_SIZE (IMS_PER_BATCH is the global batch).
    _C.SOLVER.BASE_LR = 0.045
    _C.SOLVER.REFERENCE_BATCH_SIZE = 32
    _C.SOLVER.IMS_PER_BATCH = 32  # global batch, split evenly over the processes
    _C.SOLVER.RMSPROP_DECAY = 0.9
    _C.SOLVER.RMSPROP_EPS = 1.0
    _C.SOLVER.MOMENTUM = 0.9
    _C.SOLVER.WEIGHT_DECAY = 4e-5
    _C.SOLVER.LR_DECAY = 0.94  # multiply the rate by this ...
    _C.SOLVER.LR_DECAY_EPOCHS = 2.0  # ... every this many epochs (staircase)
    _C.SOLVER.WARMUP_EPOCHS = 0.0  # linear warm-up from 0 over this many epochs
    _C.SOLVER.MAX_EPOCHS = 100
    _C.SOLVER.CLIP_GRAD_NORM = 2.0  # global-norm clipping; 0 disables it
    _C.SOLVER.LABEL_SMOOTHING = 0.1
    _C.SOLVER.AMP = True  # mixed precision, on GPU only
    _C.SOLVER.AMP_DTYPE = "float16"  # float16 (with a gradient scaler) | bfloat16
    _C.SOLVER.CHECKPOINT_PERIOD = 1  # epochs between checkpoints
    _C.SOLVER.CHECKPOINTS_TO_KEEP = 3  # older per-epoch checkpoints are deleted; 0 keeps all
    _C.SOLVER.LOG_PERIOD = 20  # iterations between metric records

    _C.TEST = CfgNode()
    _C.TEST.IMS_PER_BATCH = 64
    _C.TEST.EVAL_PERIOD = 1  # epochs between evaluations on DATASETS.TEST; 0: only after training

    _C.OUTPUT_DIR = "output/crop_classifier"
    _C.SEED = 0
    _C.CUDNN_BENCHMARK = False
    return _C


def load_config(
    config_file: Optional[Union[str, Path]] = None, opts: Optional[Sequence[str]] = None, *, freeze: bool = True
) -> CfgNode:
    """Defaults, then ``config_file`` (with its ``_BASE_`` chain), then ``KEY VALUE`` pairs in ``opts``."""
    cfg = get_cfg()
    if config_file is not None:
        config_file = Path(config_file)
        if not config_file.is_file():
            raise FileNotFoundError(f"config file not found: {config_file}")
        loaded = read_yaml_with_base(config_file)
        try:
            cfg.merge_from_other_cfg(CfgNode(loaded))
        except ConfigError:
            raise
        except (KeyError, ValueError) as e:
            raise type(e)(f"{config_file}: {_message(e)}") from None
    if opts:
        opts = list(opts)
        if len(opts) % 2:
            flags = [o for o in opts if o.startswith("--")]
            hint = (f"; {', '.join(flags)} looks like an option: put it before the KEY VALUE pairs" if flags
                    else f"; {opts[-1]!r} has no value")
            raise ValueError(f"config overrides must be KEY VALUE pairs; got an odd number ({len(opts)}): "
                             f"{' '.join(opts)}{hint}")
        for key in opts[0::2]:
            _check_key_exists(cfg, key)
        try:
            cfg.merge_from_list(opts)
        except (KeyError, ValueError) as e:
            raise type(e)(f"command-line override: {_message(e)}") from None
    try:
        validate(cfg)
    except ValueError as e:  # name where the values came from (a file value may be overridden on the line)
        sources = [str(config_file)] * (config_file is not None) + ["command-line overrides"] * bool(opts)
        raise ValueError(f"{' + '.join(sources)}: {e}" if sources else str(e)) from None
    if freeze:
        cfg.freeze()
    return cfg


def load_tool_config(
    config_file: Union[str, Path], opts: Optional[Sequence[str]] = None, *, imagenet_weights: Optional[str] = None,
    need_imagenet_weights: bool = True,
) -> CfgNode:
    """``load_config`` for the command-line tools: every problem is a ``ConfigError`` (exit code 2) whose
    message names the file, key or flag. ``imagenet_weights`` (``--imagenet-weights``) sets
    MODEL.IMAGENET_WEIGHTS verbatim (not read as a YAML literal, so any path works); with
    ``need_imagenet_weights`` a named file must exist (checked before any dataset is built).
    """
    try:
        cfg = load_config(config_file, opts, freeze=False)
    except ConfigError:
        raise
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise ConfigError(_message(e)) from None
    if imagenet_weights:
        cfg.MODEL.IMAGENET_WEIGHTS = str(imagenet_weights)
    weights = cfg.MODEL.IMAGENET_WEIGHTS
    if need_imagenet_weights and weights and weights != "imagenet" and not os.path.isfile(weights):
        where = "--imagenet-weights" if imagenet_weights else f"{config_file}: config key MODEL.IMAGENET_WEIGHTS"
        raise ConfigError(f"{where} {weights}: no such file")
    cfg.freeze()
    return cfg


def read_yaml_with_base(path: Union[str, Path], _chain: Sequence[str] = ()) -> Dict[str, Any]:
    """A config file as a dict with its ``_BASE_`` chain merged in (fvcore's rules: a base path is relative
    to the file naming it; a list of bases merges left to right; the file's own keys win).

    Unlike fvcore's loader, every problem is a ``ConfigError`` naming the file: a base that names itself
    or closes a cycle (fvcore recurses until ``RecursionError``), invalid YAML, a file that is not a
    mapping of keys, a missing base file.
    """
    path = str(path)
    real = os.path.realpath(path)
    chain = list(_chain)
    if real in chain:  # an ancestor in this very chain: a diamond (two bases sharing one) is fine
        cycle = [os.path.basename(c) for c in chain[chain.index(real):]] + [os.path.basename(real)]
        raise ConfigError(f"{path}: {BASE_KEY} cycle: " + " -> ".join(cycle))
    cfg = _read_yaml_mapping(path)
    if BASE_KEY not in cfg:
        return cfg
    bases = cfg.pop(BASE_KEY)
    bases = bases if isinstance(bases, list) else [bases]
    merged: Dict[str, Any] = {}
    for base in bases:
        if not isinstance(base, str) or not base:
            raise ConfigError(f"{path}: {BASE_KEY} must be a file name or a list of them, got {base!r}")
        base = os.path.expanduser(base)
        if not os.path.isabs(base):
            base = os.path.join(os.path.dirname(path), base)
        if not os.path.isfile(base):
            raise ConfigError(f"{path}: {BASE_KEY} file not found: {base}")
        _merge_into(read_yaml_with_base(base, chain + [real]), merged, base)
    _merge_into(cfg, merged, path)
    return merged


def _read_yaml_mapping(path: str) -> Dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except yaml.MarkedYAMLError as e:  # yaml's own message spans several lines; one line with the position
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file (a YAML config was expected)") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from None
    if not isinstance(data, dict):
        found = "an empty file" if data is None else f"a YAML {type(data).__name__}"
        raise ConfigError(f"{path}: expected a mapping of config keys (KEY: value), found {found}")
    return data


def _merge_into(src: Dict[str, Any], dst: Dict[str, Any], path: str, prefix: str = "") -> None:
    for k, v in src.items():
        if isinstance(v, dict) and k in dst:
            if not isinstance(dst[k], dict):
                raise ConfigError(f"{path}: {prefix}{k} is a group of keys here but a value in its {BASE_KEY}")
            _merge_into(v, dst[k], path, f"{prefix}{k}.")
        else:
            dst[k] = v


def _check_key_exists(cfg: CfgNode, full_key: str) -> None:
    # yacs checks override keys with `assert` (AssertionError, or nothing under -O); raise a KeyError instead.
    node = cfg
    for part in full_key.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            raise KeyError(f"Non-existent config key: {full_key}")
        node = node[part]


def validate(cfg: CfgNode) -> None:
    """Value checks that the type checks of CfgNode do not cover; each error names the key."""
    _check(cfg.MODEL.ARCH in ALL_ARCHITECTURES, "MODEL.ARCH", cfg.MODEL.ARCH, "one of " + ", ".join(sorted(ALL_ARCHITECTURES)))
    _check(0 <= cfg.INPUT.ROUTE_JITTER <= 1, "INPUT.ROUTE_JITTER", cfg.INPUT.ROUTE_JITTER, "in [0, 1]")
    if cfg.MODEL.ARCH == ROUTED_ARCH:
        _check(cfg.INPUT.SIZE == 0, "INPUT.SIZE", cfg.INPUT.SIZE,
               "0 with MODEL.ARCH auto (each route has its own input size)")
        config_routes(cfg)
    _check(cfg.MODEL.WIDTH > 0, "MODEL.WIDTH", cfg.MODEL.WIDTH, "> 0")
    _check(cfg.MODEL.NUM_CLASSES >= 0, "MODEL.NUM_CLASSES", cfg.MODEL.NUM_CLASSES, ">= 0 (0: derived)")
    _check(cfg.CROP.MODE in CROP_MODES, "CROP.MODE", cfg.CROP.MODE, " or ".join(CROP_MODES))
    _check(cfg.CROP.CONTEXT >= 0, "CROP.CONTEXT", cfg.CROP.CONTEXT, ">= 0")
    _check(0 <= cfg.INPUT.JITTER_IOU < 1, "INPUT.JITTER_IOU", cfg.INPUT.JITTER_IOU, "in [0, 1)")
    _check(cfg.INPUT.BACKGROUND_RATIO >= 0, "INPUT.BACKGROUND_RATIO", cfg.INPUT.BACKGROUND_RATIO, ">= 0")
    _check(0 < cfg.INPUT.BACKGROUND_MAX_IOU < 1, "INPUT.BACKGROUND_MAX_IOU", cfg.INPUT.BACKGROUND_MAX_IOU, "in (0, 1)")
    _check(0 < cfg.INPUT.DETECTION_NEG_IOU <= cfg.INPUT.DETECTION_POS_IOU <= 1, "INPUT.DETECTION_NEG_IOU",
           (cfg.INPUT.DETECTION_NEG_IOU, cfg.INPUT.DETECTION_POS_IOU), "0 < DETECTION_NEG_IOU <= DETECTION_POS_IOU <= 1")
    _check(cfg.INPUT.DETECTION_RATIO >= 0, "INPUT.DETECTION_RATIO", cfg.INPUT.DETECTION_RATIO, ">= 0")
    _check(cfg.INPUT.SIZE >= 0, "INPUT.SIZE", cfg.INPUT.SIZE, ">= 0 (0: native size)")
    _check(cfg.SOLVER.OPTIMIZER in ("rmsprop", "sgd"), "SOLVER.OPTIMIZER", cfg.SOLVER.OPTIMIZER, "rmsprop or sgd")
    _check(cfg.SOLVER.IMS_PER_BATCH > 0, "SOLVER.IMS_PER_BATCH", cfg.SOLVER.IMS_PER_BATCH, "> 0")
    _check(cfg.SOLVER.REFERENCE_BATCH_SIZE > 0, "SOLVER.REFERENCE_BATCH_SIZE", cfg.SOLVER.REFERENCE_BATCH_SIZE, "> 0")
    _check(cfg.SOLVER.BASE_LR > 0, "SOLVER.BASE_LR", cfg.SOLVER.BASE_LR, "> 0")
    _check(cfg.SOLVER.LR_DECAY_EPOCHS > 0, "SOLVER.LR_DECAY_EPOCHS", cfg.SOLVER.LR_DECAY_EPOCHS, "> 0")
    _check(cfg.SOLVER.MAX_EPOCHS > 0, "SOLVER.MAX_EPOCHS", cfg.SOLVER.MAX_EPOCHS, "> 0")
    _check(0 <= cfg.SOLVER.LABEL_SMOOTHING < 1, "SOLVER.LABEL_SMOOTHING", cfg.SOLVER.LABEL_SMOOTHING, "in [0, 1)")
    _check(cfg.SOLVER.CLIP_GRAD_NORM >= 0, "SOLVER.CLIP_GRAD_NORM", cfg.SOLVER.CLIP_GRAD_NORM, ">= 0 (0: off)")
    _check(cfg.SOLVER.AMP_DTYPE in ("float16", "bfloat16"), "SOLVER.AMP_DTYPE", cfg.SOLVER.AMP_DTYPE,
           "float16 or bfloat16")
    _check(cfg.SOLVER.CHECKPOINT_PERIOD > 0, "SOLVER.CHECKPOINT_PERIOD", cfg.SOLVER.CHECKPOINT_PERIOD, "> 0")
    _check(cfg.SOLVER.CHECKPOINTS_TO_KEEP >= 0, "SOLVER.CHECKPOINTS_TO_KEEP", cfg.SOLVER.CHECKPOINTS_TO_KEEP, ">= 0")
    _check(cfg.SOLVER.LOG_PERIOD > 0, "SOLVER.LOG_PERIOD", cfg.SOLVER.LOG_PERIOD, "> 0")
    _check(cfg.TEST.IMS_PER_BATCH > 0, "TEST.IMS_PER_BATCH", cfg.TEST.IMS_PER_BATCH, "> 0")
    _check(cfg.SEED >= 0, "SEED", cfg.SEED, ">= 0")
    _check(cfg.DATALOADER.NUM_WORKERS >= 0, "DATALOADER.NUM_WORKERS", cfg.DATALOADER.NUM_WORKERS, ">= 0")
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            parse_dataset_name(name, key=f"DATASETS.{key}")


#: The checkout holding configs/: the folder the shipped configs' relative dataset paths are written for.
REPO_ROOT = Path(__file__).resolve().parents[1]


def check_dataset_files(name: str, ann_file: str, image_dir: str) -> None:
    """A ``coco:`` dataset's annotation file and image folder exist, else a ``ConfigError`` that says a
    relative path is taken relative to the working directory (not the config file) and, where the path
    exists relative to this checkout (which the shipped configs are written for), to run from there.

    Args:
        name: the dataset name as the config gives it. ann_file / image_dir: its two paths.
    """
    for what, path, exists in (("annotation file", ann_file, os.path.isfile),
                               ("image folder", image_dir, os.path.isdir)):
        if exists(path):
            continue
        msg = f"dataset {name!r}: {what} {path}: no such {'file' if what.endswith('file') else 'folder'}"
        if not os.path.isabs(path):
            msg += (f" (relative dataset paths are taken relative to the working directory, {os.getcwd()}, "
                    "not to the config file")
            if exists(str(REPO_ROOT / path)) and Path.cwd().resolve() != REPO_ROOT:
                msg += f"; it exists relative to {REPO_ROOT}: run from there, or give an absolute path)"
            else:
                msg += "; run from the folder it is relative to, or give an absolute path)"
        raise ConfigError(msg)


def config_routes(cfg: CfgNode, *, jitter: bool = False) -> Optional[Routes]:
    """The routes ``MODEL.ROUTES`` describe (``None`` unless MODEL.ARCH is auto); ``jitter``: with
    ``INPUT.ROUTE_JITTER`` (training), else none. An invalid value is an error naming the key."""
    if cfg.MODEL.ARCH != ROUTED_ARCH:
        return None
    archs, thresholds = tuple(cfg.MODEL.ROUTES.ARCHS), tuple(cfg.MODEL.ROUTES.THRESHOLDS)
    try:
        Routes(archs)
    except ValueError as e:
        raise ValueError(f"config key MODEL.ROUTES.ARCHS: {e}") from None
    try:
        return Routes(archs, thresholds or None, float(cfg.INPUT.ROUTE_JITTER) if jitter else 0.0)
    except ValueError as e:
        raise ValueError(f"config key MODEL.ROUTES.THRESHOLDS: {e}") from None


def _check(ok: bool, key: str, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"config key {key}: got {value!r}, expected {expected}")


def _message(e: BaseException) -> str:
    # KeyError's str() wraps the message in quotes; use the bare message.
    return str(e.args[0]) if e.args else str(e)


def parse_dataset_name(name: str, *, key: str = "DATASETS") -> dict:
    """``coco:ANN_JSON:IMAGE_DIR`` or ``synthetic:DIR:N:SEED`` -> a dict with ``kind`` and its fields.

    Paths may themselves hold ``:``; the numeric fields are split off from the right.
    """
    kind, sep, rest = str(name).partition(":")
    usage = "expected coco:ANN_JSON:IMAGE_DIR or synthetic:DIR:NUM_IMAGES:SEED"
    if not sep:
        raise ValueError(f"{key}: dataset name {name!r} has no kind; {usage}")
    if kind == "coco":
        ann, sep, images = rest.rpartition(":")
        if not sep or not ann or not images:
            raise ValueError(f"{key}: dataset name {name!r} is malformed; {usage}")
        return {"kind": "coco", "ann_file": ann, "image_dir": images}
    if kind == "synthetic":
        parts = rest.rsplit(":", 2)
        if len(parts) != 3 or not parts[0]:
            raise ValueError(f"{key}: dataset name {name!r} is malformed; {usage}")
        try:
            num, seed = int(parts[1]), int(parts[2])
        except ValueError:
            raise ValueError(f"{key}: dataset name {name!r}: NUM_IMAGES and SEED must be integers; {usage}") from None
        if num <= 0:
            raise ValueError(f"{key}: dataset name {name!r}: NUM_IMAGES must be > 0")
        return {"kind": "synthetic", "dir": parts[0], "num_images": num, "seed": seed}
    raise ValueError(f"{key}: unknown dataset kind {kind!r} in {name!r}; {usage}")


def crop_spec(cfg: CfgNode, input_size: int) -> CropSpec:
    """The crop spec ``CROP.CONTEXT``/``CROP.MODE`` describe at ``input_size`` (what checkpoints record)."""
    return CropSpec(int(input_size), float(cfg.CROP.CONTEXT), str(cfg.CROP.MODE))
