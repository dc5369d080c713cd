"""``SecondStageConfig``: the one schema of the second stage's knobs, a frozen dataclass tree.

    SecondStageConfig(crop=CropOverrides, selection=Selection, fusion=FusionSettings, batching=Batching)

Every knob is one row of ``KNOBS``: its keyword (the ``tools/infer.py`` flag without ``--``), where it lives in
the tree, its default, its Detectron2 key (``MODEL.CROP_CLASSIFIER.*``) and its help. The command line
(``add_arguments`` / ``from_namespace``), the Detectron2 config (``d2.config``) and the resume fingerprint
(``flags()``) are each built from that table, so adding a knob is one field and one row. The constructor takes
the keywords too::

    SecondStageConfig(fusion="rescore", class_map="*=*", min_box_size=48, nms_thresh=0.5)

Values are checked where they are set; a bad one raises ``ParameterError`` naming the keyword, which each front
end rewrites into its own flag (``--min-box-size``) or key (``MODEL.CROP_CLASSIFIER.MIN_BOX_SIZE``).
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple, Union

from ..errors import ParameterError
from ..structures import CROP_MODES
from .class_map import parse_class_map
from .fusion import FUSION_MODES

ClassMapPairs = Tuple[Tuple[str, Tuple[str, ...]], ...]


def _number(name: str, value: Any, *, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        bound = f"in [{low:g}, {high:g}]" if math.isfinite(high) else f">= {low:g}"
        raise ParameterError(name, f"expected a number {bound}, got {value!r}")
    return float(value)


def _class_map_pairs(value: Any) -> ClassMapPairs:
    """Any form ``class_map.parse_class_map`` reads -> canonical ``((detector, (classifier, ...)), ...)``."""
    try:
        parsed = parse_class_map(value)
    except (ValueError, TypeError) as e:
        raise ParameterError("class_map", str(e)) from None
    return tuple((d, tuple(t)) for d, t in parsed.items())


@dataclass(frozen=True)
class CropOverrides:
    """How boxes are cut, where it differs from the classifier's own ``CropSpec`` (``None``: the checkpoint's,
    so inference crops as training did)."""

    context: Optional[float] = None
    mode: Optional[str] = None

    def __post_init__(self) -> None:
        if self.context is not None:
            object.__setattr__(self, "context", _number("context", self.context))
        if self.mode is not None and self.mode not in CROP_MODES:
            raise ParameterError("crop_mode", f"expected one of {', '.join(CROP_MODES)}, got {self.mode!r}")


@dataclass(frozen=True)
class Selection:
    """Which boxes go to the classifier: detector classes (mapped by ``class_map``, optionally only those in
    ``reclassify``) whose box passes the size gates (px of the original image; 0 = no gate)."""

    class_map: ClassMapPairs = ()
    reclassify: Tuple[str, ...] = ()
    min_box_size: float = 0.0
    max_box_size: float = 0.0
    # Boxes a size gate keeps from the classifier get their score x the checkpoint's per-class calibration
    # (meta["score_calibration"]), so a gated box does not outrank classified ones only for not being classified.
    calibrate_gates: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_map", _class_map_pairs(self.class_map))
        reclassify = (self.reclassify,) if isinstance(self.reclassify, str) else tuple(self.reclassify or ())
        object.__setattr__(self, "reclassify", tuple(str(r) for r in reclassify if str(r)))
        lo = _number("min_box_size", self.min_box_size)
        hi = _number("max_box_size", self.max_box_size)
        if hi and hi < lo:
            raise ParameterError("max_box_size", f"{hi:g} is under min_box_size {lo:g} (0 = no limit)")
        object.__setattr__(self, "min_box_size", lo)
        object.__setattr__(self, "max_box_size", hi)
        object.__setattr__(self, "calibrate_gates", bool(self.calibrate_gates))


@dataclass(frozen=True)
class FusionSettings:
    """How the detector's and the classifier's opinions combine (``fusion.py``): the rule, the class-wise NMS
    after it (0 = off), the background drop bar, and optionally a fitted fusion file (``tools/fit_fusion.py``)."""

    mode: str = "replace"
    nms_thresh: float = 0.5
    background_drop: float = 0.5
    fusion_file: Optional[str] = None

    def __post_init__(self) -> None:
        if self.mode not in FUSION_MODES:
            raise ParameterError("fusion", f"expected one of {', '.join(FUSION_MODES)}, got {self.mode!r}")
        object.__setattr__(self, "nms_thresh", _number("nms_thresh", self.nms_thresh, high=1.0))
        object.__setattr__(self, "background_drop", _number("background_drop", self.background_drop, high=1.0))
        if self.fusion_file is not None:
            object.__setattr__(self, "fusion_file", str(self.fusion_file) or None)


@dataclass(frozen=True)
class Batching:
    """Crops per classifier forward: bounds memory (an image with thousands of boxes never holds them all)."""

    crops_per_forward: int = 64

    def __post_init__(self) -> None:
        n = self.crops_per_forward
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ParameterError("crops_per_forward", f"expected an integer >= 1, got {n!r}")


def _set(group: Any, name: str, value: Any) -> Any:
    return dataclasses.replace(group, **{name: value})


_GROUPS = {"crop": CropOverrides, "selection": Selection, "fusion": FusionSettings, "batching": Batching}


@dataclass(frozen=True)
class Knob:
    """One knob: keyword ``name`` (the flag ``--name-with-dashes``) -> ``group.field`` of the config."""

    name: str
    group: str
    field: str
    d2_key: str
    help: str
    cli_type: Optional[Callable[[str], Any]] = None  # None: a flag whose value is read as given
    choices: Optional[Sequence[str]] = None
    nargs: Optional[str] = None

    @property
    def default(self) -> Any:
        return getattr(_GROUPS[self.group](), self.field)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


KNOBS: Tuple[Knob, ...] = (
    Knob("context", "crop", "context", "CONTEXT", "context margin around each box, a fraction of its side "
         "(default: the checkpoint's, as trained)", float),
    Knob("crop_mode", "crop", "mode", "CROP_MODE", "square | letterbox (default: the checkpoint's)", str,
         choices=CROP_MODES),
    Knob("class_map", "selection", "class_map", "CLASS_MAP",
         'detector class -> classifier classes, e.g. "vehicle=car,bus,truck;animal=*"; "*=*" lets the classifier '
         "pick any of its classes for any box. Default: same names only", str),
    Knob("reclassify", "selection", "reclassify", "RECLASSIFY",
         "only these detector classes go to the classifier (default: every mapped one)", str, nargs="*"),
    Knob("min_box_size", "selection", "min_box_size", "MIN_BOX_SIZE",
         "a box whose shorter side is under this (px) is not classified (0: no gate)", float),
    Knob("max_box_size", "selection", "max_box_size", "MAX_BOX_SIZE",
         "a box whose longer side is over this (px) is not classified (0: no gate)", float),
    Knob("calibrate_gates", "selection", "calibrate_gates", "CALIBRATE_GATES",
         "scale the scores of size-gated boxes by the checkpoint's per-class calibration"),
    Knob("fusion", "fusion", "mode", "FUSION",
         "replace: the classifier's best class within the detector class's set (with the default class map the "
         "class never changes, only the score); rescore: the detector's class, score x the classifier's "
         "probability of it; filter: drop boxes the classifier disagrees with (YOLOv5's apply_classifier)",
         str, choices=FUSION_MODES),
    Knob("nms_thresh", "fusion", "nms_thresh", "NMS_THRESH",
         "class-wise NMS IoU after fusion, among boxes whose class the second stage changed (0: off)", float),
    Knob("background_drop", "fusion", "background_drop", "BACKGROUND_DROP",
         "a classifier with a background class: replace drops a box whose best class is the background when "
         "its probability is over this (1: never drop, only down-score)", float),
    Knob("fusion_file", "fusion", "fusion_file", "FUSION_FILE",
         "a fitted fusion (tools/fit_fusion.py --output FUSION.json) for this classifier and first stage", str),
    Knob("crops_per_forward", "batching", "crops_per_forward", "MAX_CROPS_PER_FORWARD",
         "crops per classifier forward (bounds memory)", int),
)
KNOB = {k.name: k for k in KNOBS}


@dataclass(frozen=True, init=False)
class SecondStageConfig:
    """The second stage's knobs (see module doc). Build it from groups, from keywords, or both::

        SecondStageConfig(fusion="rescore", min_box_size=48)
        SecondStageConfig(selection=Selection(class_map="*=*"), nms_thresh=0.6)

    Args:
        crop, selection, fusion, batching: the groups (``fusion`` may also be the rule's name, as the flag).
        **flags: any keyword of ``KNOBS`` (``tools/infer.py``'s flag names), applied over the groups.
    Raises:
        ParameterError: a value out of range or an unknown keyword, naming it.
    """

    crop: CropOverrides = field(default_factory=CropOverrides)
    selection: Selection = field(default_factory=Selection)
    fusion: FusionSettings = field(default_factory=FusionSettings)
    batching: Batching = field(default_factory=Batching)

    def __init__(self, crop: Optional[CropOverrides] = None, selection: Optional[Selection] = None,
                 fusion: Union[None, str, FusionSettings] = None, batching: Optional[Batching] = None,
                 **flags: Any):
        if isinstance(fusion, str):
            flags["fusion"], fusion = fusion, None
        groups = {"crop": crop or CropOverrides(), "selection": selection or Selection(),
                  "fusion": fusion or FusionSettings(), "batching": batching or Batching()}
        for name, group in groups.items():
            if not isinstance(group, _GROUPS[name]):
                raise ParameterError(name, f"expected a {_GROUPS[name].__name__}, got {type(group).__name__}")
        unknown = sorted(set(flags) - set(KNOB))
        if unknown:
            raise ParameterError(unknown[0], f"not a second-stage option; valid: {', '.join(KNOB)}")
        for name, value in flags.items():
            k = KNOB[name]
            groups[k.group] = _set(groups[k.group], k.field, value)
        for name, group in groups.items():
            object.__setattr__(self, name, group)

    def replace(self, **flags: Any) -> "SecondStageConfig":
        """This config with the given keywords (``KNOBS`` names, or whole groups) changed."""
        groups = {"crop": self.crop, "selection": self.selection, "fusion": self.fusion, "batching": self.batching}
        for name in [n for n in flags if n in _GROUPS and isinstance(flags[n], _GROUPS[n])]:
            groups[name] = flags.pop(name)
        mode = flags.pop("fusion", None)  # the rule's name: a knob that shares its group's name
        if mode is not None:
            groups["fusion"] = _set(groups["fusion"], "mode", mode)
        return SecondStageConfig(**groups, **flags)

    def flags(self) -> Dict[str, Any]:
        """``{keyword: value}`` of every knob, JSON-ready (the class map as ``[[detector, [classes]], ...]``)."""
        out = {}
        for k in KNOBS:
            v = getattr(getattr(self, k.group), k.field)
            if k.name == "class_map":
                v = [[d, list(t)] for d, t in v]
            elif isinstance(v, tuple):
                v = list(v)
            out[k.name] = v
        return out

    def changed_flags(self) -> Dict[str, Any]:
        """The knobs whose value differs from the default (what a summary or fingerprint needs to show)."""
        default = SecondStageConfig().flags()
        return {k: v for k, v in self.flags().items() if v != default[k]}

    @classmethod
    def from_namespace(cls, args: argparse.Namespace) -> "SecondStageConfig":
        """From the flags ``add_arguments`` defined (missing attributes keep their default)."""
        flags = {k.name: getattr(args, k.name) for k in KNOBS if hasattr(args, k.name)}
        flags = {n: v for n, v in flags.items() if not (v is None and KNOB[n].default is not None)}
        if flags.get("class_map") is None:
            flags.pop("class_map", None)
        return cls(**flags)

    @classmethod
    def from_d2(cls, node: Mapping[str, Any]) -> "SecondStageConfig":
        """From ``cfg.MODEL.CROP_CLASSIFIER`` (keys of ``KNOBS``'s ``d2_key``; absent keys keep the default)."""
        flags = {k.name: node[k.d2_key] for k in KNOBS if k.d2_key in node}
        flags = {n: (None if v in ("", None) and n == "fusion_file" else v) for n, v in flags.items()}
        flags = {n: (int(v) if n == "crops_per_forward" and isinstance(v, float) and v.is_integer() else v)
                 for n, v in flags.items()}
        return cls(**flags)


def d2_defaults() -> Dict[str, Any]:
    """``{D2 key: default}`` as a Detectron2 ``CfgNode`` holds them (lists for tuples, "" for no file)."""
    out = {}
    for k in KNOBS:
        d = k.default
        out[k.d2_key] = [] if isinstance(d, tuple) else ("" if k.name == "fusion_file" else d)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per knob (``--min-box-size`` ...), defaults from the config, to ``parser``."""
    group = parser.add_argument_group("second stage (crop_classifier.SecondStageConfig)")
    for k in KNOBS:
        if k.name == "calibrate_gates":
            group.add_argument("--no-calibrate-gates", dest="calibrate_gates", action="store_false",
                               help="do not " + k.help)
            continue
        default = k.default
        kwargs: Dict[str, Any] = dict(dest=k.name, help=k.help, type=k.cli_type,
                                      default=list(default) if isinstance(default, tuple) else default)
        if k.choices:
            kwargs["choices"] = list(k.choices)
        if k.nargs:
            kwargs["nargs"] = k.nargs
        if k.name == "class_map":
            kwargs["default"] = None
        group.add_argument(k.flag, **kwargs)


def flag_error(e: ParameterError, flags: Optional[Mapping[str, str]] = None) -> str:
    """A ``ParameterError`` in command-line words: ``--min-box-size: expected ...``.

    Args:
        e: the error.
        flags: a front end's own flag for parameters outside ``KNOBS`` (``{"path": "--classifier-weights"}``);
            any other parameter reads as ``--param-name``.
    """
    k = KNOB.get(e.param)
    return f"{k.flag}: {e.detail}" if k else e.as_flag(flags)


def d2_error(e: ParameterError, prefix: str = "MODEL.CROP_CLASSIFIER.",
             keys: Optional[Mapping[str, str]] = None) -> str:
    """A ``ParameterError`` in Detectron2 config words: ``MODEL.CROP_CLASSIFIER.MIN_BOX_SIZE: expected ...``.

    Args:
        e: the error.
        prefix: the second stage's config node.
        keys: full config keys of parameters outside ``KNOBS`` (``{"device": "MODEL.DEVICE"}``); any other
            parameter reads as ``prefix + PARAM``.
    """
    k = KNOB.get(e.param)
    key = prefix + k.d2_key if k else (keys or {}).get(e.param) or prefix + e.param.upper()
    return f"{key}: {e.detail}"


__all__ = ["SecondStageConfig", "CropOverrides", "Selection", "FusionSettings", "Batching", "KNOBS", "Knob",
           "add_arguments", "d2_defaults", "flag_error", "d2_error"]
