"""int8 for CPU: static post-training quantization with PyTorch's FX graph mode (``torch.ao.quantization``).

The pattern of torchvision's quantized Inception-v3: the eval-mode network is traced, conv+BN(+ReLU) fused,
observers inserted (``prepare_fx`` with the x86 backend's default qconfig: per-channel int8 weights, uint8
activations with histogram observers), run on calibration crops from the checkpoint's training data, then
converted (``convert_fx``). Normalisation stays in fp32 outside the quantized graph (``InferenceClassifier``
does it), so the quantized net sees the same normalised input the fp32 one was trained on.

The result is a checkpoint ``{"model": quantized state dict, "meta": {..., "quantized": QUANTIZED}}``. Loading
rebuilds the architecture, prepares and converts it the same way (observers unused) and loads the
quantized state dict (``torch.load(weights_only=True)``: quantized tensors are plain tensors to it).

A routed (``auto``) checkpoint is quantized per route: each stem's view of the shared weights gets its own
int8 checkpoint (``out.pth`` -> ``out.v3_79.pth``, ...; activation ranges differ per input size), calibrated on
the same crops cut at that route's size, with the set's routes recorded (``export.ROUTE_SET_KEY``); they load
back as a routed set (``--classifier auto --classifier-weights out.pth --precision int8``).
"""
from __future__ import annotations

import copy

import logging
from collections import OrderedDict
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor, nn

from ..data import CropDataset
from ..engine.data import load_datasets
from ..errors import CheckpointError, ParameterError, UsageError
from ..models.inception_v3 import STEMS
from ..models.inference import InferenceClassifier, route_meta, build_inference_classifier
from ..models.routing import Routes
from ..models.registry import create_classifier
from ..models.weights import classifier_from_checkpoint, load_checkpoint
from ..structures import ClassifierMeta, object_class_names
from ..utils.io import atomic_torch_save
from .accuracy import held_out_top1
from .export import ROUTE_SET_KEY, is_routed, route_file

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
QBACKEND = "x86"
QUANTIZED = "x86-int8"  # meta["quantized"] of an int8 checkpoint


def is_quantized(meta: Mapping[str, Any]) -> bool:
    extra = meta.extra if isinstance(meta, ClassifierMeta) else meta
    return bool(extra.get("quantized"))


def _engine() -> str:
    engines = torch.backends.quantized.supported_engines
    engine = QBACKEND if QBACKEND in engines else "fbgemm" if "fbgemm" in engines else None
    if engine is None:
        raise UsageError(f"int8 needs PyTorch's x86/fbgemm quantized engine, which this build lacks "
                         f"(supported: {engines}); use fp32")
    torch.backends.quantized.engine = engine
    return engine


OBSERVERS = ("histogram", "minmax")


def qconfig_mapping(observer: str = "histogram"):
    """The x86 backend's default mapping (``histogram``: its activation observer, best ranges, slow: about
    0.1 s per observer to convert), or the same with min/max activation observers (``minmax``: fast; used
    to rebuild a checkpoint's structure, whose ranges are then loaded)."""
    from torch.ao.quantization import MinMaxObserver, QConfig, get_default_qconfig_mapping

    if observer not in OBSERVERS:
        raise UsageError(f"--observer {observer!r}: valid choices are {', '.join(OBSERVERS)}")
    mapping = get_default_qconfig_mapping(QBACKEND)
    if observer == "histogram":
        return mapping
    default = mapping.global_qconfig
    import warnings

    with warnings.catch_warnings():  # torch's own x86 default still passes reduce_range
        warnings.simplefilter("ignore", UserWarning)
        act = default.activation()
    fast = QConfig(activation=MinMaxObserver.with_args(dtype=act.dtype, qscheme=act.qscheme,
                                                       quant_min=act.quant_min, quant_max=act.quant_max),
                   weight=default.weight)
    mapping.set_global(fast)
    for kind, qconfig in list(mapping.object_type_qconfigs.items()):
        if qconfig is default:
            mapping.set_object_type(kind, fast)
    return mapping


def prepare(model: nn.Module, input_size: int, observer: str = "histogram") -> nn.Module:
    """The observed (calibration) form of ``model`` (eval forward traced; the aux head is not in it)."""
    from torch.ao.quantization.quantize_fx import prepare_fx

    _engine()
    example = (torch.zeros(1, 3, input_size, input_size),)
    return prepare_fx(model.eval(), qconfig_mapping(observer), example)


def convert(prepared: nn.Module) -> nn.Module:
    import warnings

    from torch.ao.quantization.quantize_fx import convert_fx

    with warnings.catch_warnings():  # uncalibrated observers (a rebuild) warn; their ranges are loaded after
        warnings.simplefilter("ignore", UserWarning)
        return convert_fx(prepared).eval()


@dataclass
class CalibrationOptions:
    """Which crops calibrate: ``num_crops`` spread evenly over ``datasets`` (training crops, un-augmented,
    cut like inference crops), boxes smaller than ``min_size`` px skipped, ``batch_size`` at a time."""

    datasets: Sequence[str] = field(default_factory=list)
    num_crops: int = 512
    min_size: float = 0.0
    batch_size: int = 32
    observer: str = "histogram"


def calibration_batches(meta: ClassifierMeta, options: CalibrationOptions) -> Iterator[Tensor]:
    """Crops ``[B, 3, S, S]`` in [0, 1] from the named datasets (the engine's loading, read-only)."""
    if not options.datasets:
        raise UsageError("--calib-dataset: name the dataset(s) the classifier was trained on (or --config-file)")
    if options.num_crops < 1:
        raise UsageError(f"--calib-crops {options.num_crops}: must be >= 1")
    samples, _ = load_datasets(list(options.datasets), class_names=object_class_names(meta), min_size=options.min_size)
    if not samples:
        raise UsageError(f"--calib-dataset {', '.join(options.datasets)}: no crops (min size {options.min_size})")
    pick = np.unique(np.linspace(0, len(samples) - 1, min(options.num_crops, len(samples))).round().astype(int))
    pick = sorted(pick, key=lambda i: samples[i][0])  # grouped by image: each image decoded once
    dataset = CropDataset([samples[i] for i in pick], meta.input_size, context=meta.crop.context,
                          mode=meta.crop.mode, train=False)
    for start in range(0, len(dataset), options.batch_size):
        yield dataset.__getitems__(range(start, min(start + options.batch_size, len(dataset))))[0]


def quantize_model(model: nn.Module, meta: ClassifierMeta, batches: Iterator[Tensor],
                   observer: str = "histogram") -> nn.Module:
    """The int8 form of ``model`` (left untouched), calibrated on crops ``batches`` in [0, 1]; the observers see
    them normalised by the inference form itself, as the int8 net will at inference."""
    prepared = prepare(copy.deepcopy(model).cpu(), meta.input_size, observer)
    calibrating = InferenceClassifier(prepared, meta, channels_last=False)
    seen = 0
    for x in batches:
        calibrating.logits(x)
        seen += len(x)
    if not seen:
        raise UsageError("calibration saw no crops")
    logger.info("calibrated on %d crops", seen)
    return convert(prepared)


def int8_meta(meta: ClassifierMeta, calib: CalibrationOptions) -> Dict[str, Any]:
    out = meta.to_dict()
    out["quantized"] = QUANTIZED
    out["quantization"] = {"method": "torch.ao.quantization FX static PTQ", "backend": QBACKEND,
                           "calib_datasets": list(calib.datasets), "calib_crops": int(calib.num_crops),
                           "observer": calib.observer,
                           "torch": str(torch.__version__)}
    return out


def _int8_checkpoint(model: nn.Module, meta: ClassifierMeta, calib: CalibrationOptions,
                     eval_datasets: Optional[Sequence[str]], eval_min_size: float) -> Dict[str, Any]:
    """``{"model", "meta"}`` of the int8 form of a single-stem ``model``, with the held-out comparison."""
    qmodel = quantize_model(model, meta, calibration_batches(meta, calib), calib.observer)
    out_meta = int8_meta(meta, calib)
    if eval_datasets:
        forms = {"fp32": build_inference_classifier(model, meta, device="cpu"),
                 "int8": InferenceClassifier(qmodel, meta, channels_last=False)}
        result = held_out_top1(forms, meta, eval_datasets, min_size=eval_min_size)
        logger.info("%s held-out top-1 on %d crops: fp32 %.4f, int8 %.4f (agreement %.4f)", meta.arch,
                    result["crops"], result["top1"]["fp32"], result["top1"]["int8"], result["agreement"]["int8"])
        out_meta["quantization"]["eval"] = result
    return {"model": encode_state(qmodel.state_dict()), "meta": out_meta}


def route_views(model: nn.Module, meta: ClassifierMeta) -> List[Tuple[nn.Module, ClassifierMeta]]:
    """A routed model's routes as (plain single-stem view sharing its weights, that route's meta with the set's
    routes under ``ROUTE_SET_KEY``), smallest input first: what per-route int8 quantizes."""
    routes = Routes.from_meta(meta.extra) or Routes(tuple(a for s in model.stems for a, spec in STEMS.items()
                                                          if spec == s))
    return [(model.route(STEMS[a].input_size),
             replace(route_meta(meta, a), extra={**route_meta(meta, a).extra, ROUTE_SET_KEY: routes.to_meta()}))
            for a in routes.archs]


def quantize_checkpoint(weights: PathLike, output: PathLike, calib: CalibrationOptions,
                        eval_datasets: Optional[Sequence[str]] = None, eval_min_size: float = 0.0) -> Path:
    """Reads a single-stem fp32 checkpoint, writes its int8 checkpoint atomically to ``output``; with
    ``eval_datasets`` the fp32 and int8 top-1 on those held-out crops go into ``meta["quantization"]["eval"]``
    (and the log). A routed checkpoint: ``quantize_checkpoint_files``."""
    raw = load_checkpoint(weights)["meta"]
    if is_quantized(raw):
        raise UsageError(f"--weights {weights}: already an int8 checkpoint")
    if is_routed(raw):
        raise UsageError(f"--weights {weights}: a routed (auto) checkpoint is quantized per route "
                         "(quantize_checkpoint_files, tools/quantize.py)")
    model, raw_meta = classifier_from_checkpoint(weights)
    ckpt = _int8_checkpoint(model, ClassifierMeta.from_dict(raw_meta), calib, eval_datasets, eval_min_size)
    return atomic_torch_save(output, ckpt)


def quantize_checkpoint_files(weights: PathLike, output: PathLike, calib: CalibrationOptions,
                              eval_datasets: Optional[Sequence[str]] = None, eval_min_size: float = 0.0) -> List[Path]:
    """``[output]`` for a single-stem checkpoint; a routed one: one int8 checkpoint per route
    (``route_file(output, arch)``), all calibrated before any is written."""
    raw = load_checkpoint(weights)["meta"]
    if not is_routed(raw) or is_quantized(raw):
        return [quantize_checkpoint(weights, output, calib, eval_datasets, eval_min_size)]
    model, raw_meta = classifier_from_checkpoint(weights)
    ckpts = [(route_file(output, m.arch), _int8_checkpoint(view, m, calib, eval_datasets, eval_min_size))
             for view, m in route_views(model, ClassifierMeta.from_dict(raw_meta))]
    return [atomic_torch_save(path, ckpt) for path, ckpt in ckpts]


# torch.load(weights_only=True) refuses quantized tensors on torch < 2.5 (``_rebuild_qtensor``) and dtypes
# as values are not plain data either: the checkpoint stores each quantized tensor as its integer values
# and quantization parameters, and dtypes by name; ``decode_state`` rebuilds them exactly.
_QTAG = "__qtensor__"
_DTAG = "__dtype__"


def _encode(v: Any) -> Any:
    if isinstance(v, tuple):
        return tuple(_encode(e) for e in v)
    if isinstance(v, torch.dtype):
        return {_DTAG: str(v).replace("torch.", "")}
    if not isinstance(v, Tensor):
        return v
    if not v.is_quantized:
        return v.detach().clone()
    if v.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
        q = {"scales": v.q_per_channel_scales(), "zero_points": v.q_per_channel_zero_points(),
             "axis": int(v.q_per_channel_axis())}
    else:
        q = {"scale": float(v.q_scale()), "zero_point": int(v.q_zero_point())}
    return {_QTAG: v.int_repr(), "dtype": str(v.dtype).replace("torch.", ""), **q}


def _decode(v: Any) -> Any:
    if isinstance(v, tuple):
        return tuple(_decode(e) for e in v)
    if not isinstance(v, dict):
        return v
    if _DTAG in v:
        return getattr(torch, v[_DTAG])
    dtype = getattr(torch, v["dtype"])
    if "scales" in v:
        return torch._make_per_channel_quantized_tensor(v[_QTAG], v["scales"], v["zero_points"], v["axis"])
    q = torch._make_per_tensor_quantized_tensor(v[_QTAG], v["scale"], v["zero_point"])
    assert q.dtype == dtype, (q.dtype, dtype)
    return q


def _shapes(v: Any) -> Any:
    """Shapes of a state-dict value (a quantized Linear keeps ``(weight, bias)`` in one tuple entry)."""
    if isinstance(v, tuple):
        return tuple(_shapes(e) for e in v)
    return list(v.shape) if isinstance(v, Tensor) else None


def encode_state(sd: Mapping[str, Any]) -> Dict[str, Any]:
    """A quantized state dict as tensors, numbers, strings and containers only (``weights_only``-safe)."""
    return {k: _encode(v) for k, v in sd.items()}


def decode_state(sd: Mapping[str, Any], path: PathLike = "<checkpoint>") -> Dict[str, Any]:
    try:
        return {k: _decode(v) for k, v in sd.items()}
    except (KeyError, TypeError, AttributeError, RuntimeError, AssertionError) as e:
        raise CheckpointError(f"{path}: malformed int8 state dict ({type(e).__name__}: {e})") from e


def rebuild_int8(state_dict: Mapping[str, Any], meta: ClassifierMeta, path: PathLike = "<checkpoint>") -> nn.Module:
    """The quantized network an int8 checkpoint holds (CPU)."""
    if meta.extra.get("quantized") != QUANTIZED:
        raise CheckpointError(f"{path}: quantized as {meta.extra.get('quantized')!r}; this version reads "
                              f"{QUANTIZED!r} checkpoints only (re-run tools/quantize.py)")
    try:
        model = create_classifier(meta.arch, meta.num_classes, width=meta.width, aux_logits=False)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    model.transform_input = meta.transform_input
    state_dict = decode_state(state_dict, path)
    qmodel = convert(prepare(model, meta.input_size, "minmax"))
    own = qmodel.state_dict()
    problems = [f"missing {k}" for k in own if k not in state_dict]
    problems += [f"unexpected {k}" for k in state_dict if k not in own]
    problems += [f"{k}: shape {_shapes(v)} vs {_shapes(own[k])}" for k, v in state_dict.items()
                 if k in own and _shapes(v) != _shapes(own[k])]
    if problems:
        raise CheckpointError(f"{path}: int8 weights do not match {meta.arch} (width {meta.width}, "
                              f"{meta.num_classes} classes): " + "; ".join(problems[:4]))
    # Quantized modules read their state by format version (``_metadata``), which a plain dict lost: the
    # freshly converted model's versions are the ones this torch writes.
    state_dict = OrderedDict(state_dict)
    state_dict._metadata = getattr(own, "_metadata", OrderedDict())  # type: ignore[attr-defined]
    qmodel.load_state_dict(state_dict, strict=True)
    return qmodel.eval()


def load_int8(path: PathLike, *, device: Any = "cpu", expected_meta: Optional[dict] = None):
    """An int8 checkpoint as an ``InferenceClassifier`` (CPU only)."""
    if torch.device(device).type != "cpu":
        raise ParameterError("device", f"{device}: {path} is an int8 checkpoint (x86 quantized kernels), which "
                             "runs on CPU only; run it on cpu, or the fp32 checkpoint on the GPU")
    ckpt = load_checkpoint(path, expected_meta)
    meta = ClassifierMeta.from_dict(ckpt["meta"])
    net = rebuild_int8(ckpt["model"], meta, path)
    return InferenceClassifier(net, meta, precision="fp32", channels_last=False)


__all__ = ["QUANTIZED", "CalibrationOptions", "calibration_batches", "quantize_model", "quantize_checkpoint",
           "quantize_checkpoint_files", "route_views",
           "rebuild_int8", "load_int8", "encode_state", "decode_state", "is_quantized", "int8_meta"]
