"""The one inference form of a classifier: what every path that classifies crops runs.

``InferenceClassifier`` takes crops as float ``[N, 3, S, S]`` RGB in [0, 1] (what ``crops.extract_crops``
gives) and returns class probabilities ``[N, K]`` (float32). Inside, once: ImageNet-style normalisation
with the checkpoint's mean/std, the network in eval mode with every BN folded into its convolution
(``fuse.optimize_for_inference``; 94 memory-bound passes fewer), weights and input in channels_last (oneDNN and cuDNN
run NHWC convolutions without layout conversions), ``torch.inference_mode``, the requested precision, and
the softmax. ``SecondStage``, ``tools/infer.py``, the Detectron2 meta-architecture, ``tools/evaluate.py``
and the benchmarks all build it through ``build_inference_classifier``; no other place normalises crops
or folds BN for inference.

Other runtimes (ONNX Runtime, OpenVINO, int8) expose the same call: crops in, probabilities out, with
``meta`` (``structures.ClassifierMeta``) describing classes and crop spec.

``RoutedClassifier`` is the routed form (``routing``): one such classifier per route, each called with crops
at its own input size; ``routes`` tells callers (``SecondStage``) which size each box is cropped at. A
routed checkpoint (``arch`` ``auto``) gives one BN-folded weight set behind its per-route views;
``routed_classifier`` makes a routed set of separately trained per-stem classifiers (or runtimes).
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Dict, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch
from torch import Tensor, nn

from ..errors import ParameterError, UsageError
from ..structures import ClassifierMeta, CropSpec
from .fuse import optimize_for_inference
from .inception_v3 import STEMS, RoutedInceptionV3
from .routing import ROUTED_ARCH, Routes
from .weights import classifier_from_checkpoint

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


# The instruction sets that decide which precision is fast, as /proc/cpuinfo names them.
CPU_FEATURES = {"AVX2": ("avx2",), "AVX-512": ("avx512f",), "BF16": ("avx512_bf16", "amx_bf16"),
                "VNNI": ("avx512_vnni", "avx_vnni"), "AMX": ("amx_tile",)}


def cpu_flags() -> Tuple[str, ...]:
    """The CPU's feature flags (the first processor's ``flags`` line of /proc/cpuinfo; () where unreadable)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return tuple(line.split(":", 1)[1].split())
    except OSError:
        pass
    return ()


def cpu_features() -> Dict[str, bool]:
    """``{"AVX2": ..., "AVX-512": ..., "BF16": ..., "VNNI": ..., "AMX": ...}`` for this CPU (``CPU_FEATURES``)."""
    flags = set(cpu_flags())
    return {name: any(f in flags for f in names) for name, names in CPU_FEATURES.items()}


def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bf16 matrix maths natively (AVX-512 BF16 or AMX), where bf16 is worth it."""
    probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        if probe is not None and bool(probe()):
            # oneDNN also "supports" bf16 by emulation on plain AVX-512; only the native flags make it fast.
            return cpu_features()["BF16"]
    except RuntimeError:
        pass
    return False


def check_precision(precision: str, device: Any) -> str:
    """Validates ``precision`` for ``device``; returns it. Raises ``ParameterError`` (``precision``)."""
    if precision not in PRECISIONS:
        raise ParameterError("precision", f"expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    kind = torch.device(device).type
    if precision == "fp16" and kind == "cpu":
        raise ParameterError("precision", "fp16: CPUs have no fast fp16 convolutions; use fp32 (or bf16 on a CPU "
                             "with AVX-512 BF16/AMX, or int8 via tools/quantize.py)")
    if precision == "bf16" and kind == "cpu" and not cpu_has_native_bf16():
        raise ParameterError("precision", "bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX), where bf16 "
                             "runs slower than fp32; use fp32 (the CPU default) or int8 via tools/quantize.py")
    return precision


@runtime_checkable
class Classifier(Protocol):
    """What every loaded classifier is, whatever runs it (torch, ONNX Runtime, OpenVINO, int8, a routed set):
    ``meta`` (classes, crop spec, normalisation), ``routes`` (``None``, or a routed classifier's ``Routes``),
    ``device``, ``__call__(crops) -> probabilities`` and ``logits(crops)``.

    Args (of both calls): crops ``[N, 3, S, S]`` float RGB in [0, 1]. Returns: ``[N, K]`` float32.
    """

    meta: ClassifierMeta
    routes: Optional[Routes]

    @property
    def device(self) -> torch.device: ...

    def __call__(self, crops: Tensor) -> Tensor: ...

    def logits(self, crops: Tensor) -> Tensor: ...


class InferenceClassifier(nn.Module):
    """Crops in [0, 1] -> probabilities, in the inference form (see module doc). Build it with
    ``build_inference_classifier``; ``logits(x)`` gives the pre-softmax output (parity tests, export)."""

    routes: Optional[Routes] = None  # a single input size (RoutedClassifier has routes)

    def __init__(self, net: nn.Module, meta: ClassifierMeta, *, precision: str = "fp32", channels_last: bool = True):
        super().__init__()
        self.net = net
        self.meta = meta
        self.precision = precision
        self.channels_last = bool(channels_last)
        self.register_buffer("mean", torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)

    @property
    def crop(self) -> CropSpec:
        return self.meta.crop

    @property
    def class_names(self):
        return list(self.meta.class_names)

    @property
    def input_size(self) -> int:
        return self.meta.input_size

    @property
    def device(self) -> torch.device:
        return self.mean.device

    def train(self, mode: bool = True) -> "InferenceClassifier":
        return super().train(False)  # folded BN has no statistics to update: always eval

    def _autocast(self, x: Tensor):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(device_type=x.device.type, dtype=_DTYPES[self.precision])

    def normalise(self, x: Tensor) -> Tensor:
        """Crops in [0, 1] -> the network's input (the checkpoint's mean/std); traceable, for export."""
        return (x.to(self.device, torch.float32) - self.mean) / self.std

    def logits(self, x: Tensor) -> Tensor:
        x = self.normalise(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), self._autocast(x):
            return self.net(x).float()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"expected crops [N, 3, S, S], got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            return torch.zeros(0, self.meta.num_classes, device=self.device)
        return torch.softmax(self.logits(x), dim=1)


class RoutedClassifier(nn.Module):
    """Crops in [0, 1] -> probabilities, each batch run by the route whose input size is the crops' side.
    ``classifiers``: one per route of ``routes``, smallest input first (``InferenceClassifier`` or any runtime
    with its call and ``meta``); they must agree on classes and crop context/mode. ``meta`` is the routed meta
    (``arch`` ``auto``, ``routes``, the smallest route's input size)."""

    def __init__(self, classifiers: Sequence[Any], routes: Routes, meta: ClassifierMeta) -> None:
        super().__init__()
        if len(classifiers) != len(routes):
            raise ValueError(f"{len(classifiers)} classifiers for {len(routes)} routes ({list(routes.archs)})")
        for c, size in zip(classifiers, routes.input_sizes):
            if int(c.meta.input_size) != size:
                raise ValueError(f"route {size} px: its classifier takes {c.meta.input_size} px crops")
        self.routes, self.meta = routes, meta
        self.classifiers = list(classifiers)
        if all(isinstance(c, nn.Module) for c in classifiers):
            self.routed = nn.ModuleList(classifiers)  # .to()/.eval() reach every route
        self._by_size: Dict[int, Any] = dict(zip(routes.input_sizes, classifiers))

    crop = property(lambda self: self.meta.crop)
    class_names = property(lambda self: list(self.meta.class_names))
    input_size = property(lambda self: self.meta.input_size)
    device = property(lambda self: torch.device(self.classifiers[0].device))
    precision = property(lambda self: getattr(self.classifiers[0], "precision", "fp32"))

    def train(self, mode: bool = True) -> "RoutedClassifier":
        return super().train(False)  # inference forms only: always eval (a Detectron2 model's train() reaches here)

    def route(self, size: int) -> Any:
        """The classifier that takes ``size`` px crops."""
        if int(size) not in self._by_size:
            raise ValueError(f"routed classifier: no route takes {int(size)} px crops (routes: "
                             f"{list(self.routes.input_sizes)})")
        return self._by_size[int(size)]

    def logits(self, x: Tensor) -> Tensor:
        return self.route(x.shape[-1]).logits(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.route(x.shape[-1])(x)


def route_meta(meta: ClassifierMeta, arch: str) -> ClassifierMeta:
    """One route's meta: that stem's name and input size, the routed meta's classes and crop context/mode."""
    extra = {k: v for k, v in meta.extra.items() if k != "routes"}
    return dataclasses.replace(meta, arch=arch, crop=dataclasses.replace(meta.crop, size=STEMS[arch].input_size),
                               extra=extra)


def routed_meta(meta: ClassifierMeta, routes: Routes) -> ClassifierMeta:
    """``meta`` (any route's) as the routed set's: arch ``auto``, the smallest input size, ``routes`` recorded."""
    crop = dataclasses.replace(meta.crop, size=routes.input_sizes[0])
    return dataclasses.replace(meta, arch=ROUTED_ARCH, crop=crop, extra={**meta.extra, "routes": routes.to_meta()})


def routed_classifier(classifiers: Sequence[Any], thresholds: Optional[Sequence[float]] = None) -> RoutedClassifier:
    """Separately trained single-stem classifiers (any order, distinct stems) as one routed set. They must
    have the same classes and crop context/mode; ``thresholds`` default to ``Routes``'s."""
    ordered = sorted(classifiers, key=lambda c: int(c.meta.input_size))
    archs = tuple(str(c.meta.arch) for c in ordered)
    first = ordered[0].meta
    for c in ordered[1:]:
        if list(c.meta.class_names) != list(first.class_names):
            raise UsageError(f"routed set: {c.meta.arch} has classes {list(c.meta.class_names)[:5]}..., "
                             f"{first.arch} has {list(first.class_names)[:5]}...; the routes must share their classes")
        if (c.meta.crop.context, c.meta.crop.mode) != (first.crop.context, first.crop.mode):
            raise UsageError(f"routed set: {c.meta.arch} crops with context {c.meta.crop.context}/{c.meta.crop.mode}, "
                             f"{first.arch} with {first.crop.context}/{first.crop.mode}; the routes must crop alike")
    try:
        routes = Routes(archs, None if thresholds is None else tuple(thresholds))
    except ValueError as e:
        raise UsageError(f"routed set: {e}") from None
    return RoutedClassifier(ordered, routes, routed_meta(first, routes))


def build_inference_classifier(
    model: nn.Module,
    meta: Any,
    *,
    device: Any = None,
    precision: str = "fp32",
    fold_bn: bool = True,
    channels_last: bool = True,
    route_thresholds: Optional[Sequence[float]] = None,
) -> Any:
    """The inference form of ``model`` (left untouched: the form is built on a copy). ``meta``: a
    ``ClassifierMeta`` or the checkpoint's meta dict. ``device``: default the model's. A routed model
    (``RoutedInceptionV3``, meta ``routes``) gives a ``RoutedClassifier``: BN folded once, one view per route
    (``route_thresholds``: other thresholds than the meta's)."""
    meta = meta if isinstance(meta, ClassifierMeta) else ClassifierMeta.from_dict(meta)
    if device is None:
        device = next(iter(model.parameters()), torch.zeros(0)).device
    check_precision(precision, device)
    if isinstance(model, RoutedInceptionV3) or meta.arch == ROUTED_ARCH:
        return _build_routed(model, meta, Routes.from_meta(meta.extra), device=device, precision=precision, fold_bn=fold_bn,
                             channels_last=channels_last, thresholds=route_thresholds)
    net = optimize_for_inference(model, fuse=fold_bn, channels_last=channels_last).to(device)
    return InferenceClassifier(net, meta, precision=precision, channels_last=channels_last).to(device)


def _build_routed(model: nn.Module, meta: ClassifierMeta, routes: Optional[Routes], *, device: Any, precision: str,
                  fold_bn: bool, channels_last: bool, thresholds: Optional[Sequence[float]]) -> RoutedClassifier:
    if not isinstance(model, RoutedInceptionV3):
        raise ValueError(f"meta names the routed arch {ROUTED_ARCH!r} but the model is a single-stem "
                         f"{type(model).__name__}")
    if routes is None:
        routes = Routes(tuple(a for s in model.stems for a, spec in STEMS.items() if spec == s))
    try:
        routes = routes.with_thresholds(thresholds)
    except ValueError as e:
        raise ParameterError("route_thresholds", str(e)) from None
    # Fold BN once on the smallest route's plain view; the other routes are views of the folded copy.
    base = optimize_for_inference(model.route(routes.input_sizes[0]), fuse=fold_bn, channels_last=channels_last)
    base = base.to(device)
    meta = routed_meta(meta, routes)
    forms = [InferenceClassifier(base.with_stem(STEMS[a]) if i else base, route_meta(meta, a), precision=precision,
                                 channels_last=channels_last).to(device) for i, a in enumerate(routes.archs)]
    return RoutedClassifier(forms, routes, meta)


def load_inference_classifier(
    path: Any,
    *,
    device: Any = "cpu",
    expected_meta: Optional[dict] = None,
    precision: str = "fp32",
    **kwargs: Any,
) -> InferenceClassifier:
    """A checkpoint's classifier in its inference form (meta checked against ``expected_meta``)."""
    check_precision(precision, device)
    model, meta = classifier_from_checkpoint(path, map_location=device, expected_meta=expected_meta)
    return build_inference_classifier(model, meta, device=device, precision=precision, **kwargs)
