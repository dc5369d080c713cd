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
"""
from __future__ import annotations

import contextlib
from typing import Any, Optional

import torch
from torch import Tensor, nn

from ..errors import UsageError
from ..structures import ClassifierMeta, CropSpec
from .fuse import optimize_for_inference
from .weights import classifier_from_checkpoint

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bf16 matrix maths natively (AVX-512 BF16 or AMX), where bf16 is worth it."""
    probe = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    try:
        if probe is not None and bool(probe()):
            # oneDNN also "supports" bf16 by emulation on plain AVX-512; only the native flags make it fast.
            with open("/proc/cpuinfo") as f:
                flags = f.read()
            return "avx512_bf16" in flags or "amx_bf16" in flags
    except (OSError, RuntimeError):
        pass
    return False


def check_precision(precision: str, device: Any) -> str:
    """Validates ``precision`` for ``device``; returns it. Raises ``UsageError`` naming the flag."""
    if precision not in PRECISIONS:
        raise UsageError(f"--precision {precision!r}: valid choices are {', '.join(PRECISIONS)}")
    kind = torch.device(device).type
    if precision == "fp16" and kind == "cpu":
        raise UsageError("--precision fp16: CPUs have no fast fp16 convolutions; use fp32 (or bf16 on a CPU with "
                         "AVX-512 BF16/AMX, or int8 via tools/quantize.py)")
    if precision == "bf16" and kind == "cpu" and not cpu_has_native_bf16():
        raise UsageError("--precision bf16: this CPU has no native bf16 (AVX-512 BF16 or AMX), where bf16 runs "
                         "slower than fp32; use fp32 (the CPU default) or int8 via tools/quantize.py")
    return precision


class InferenceClassifier(nn.Module):
    """Crops in [0, 1] -> probabilities, in the inference form (see module doc). Build it with
    ``build_inference_classifier``; ``logits(x)`` gives the pre-softmax output (parity tests, export)."""

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


def build_inference_classifier(
    model: nn.Module,
    meta: Any,
    *,
    device: Any = None,
    precision: str = "fp32",
    fold_bn: bool = True,
    channels_last: bool = True,
) -> InferenceClassifier:
    """The inference form of ``model`` (left untouched: the form is built on a copy). ``meta``: a
    ``ClassifierMeta`` or the checkpoint's meta dict. ``device``: default the model's."""
    meta = meta if isinstance(meta, ClassifierMeta) else ClassifierMeta.from_dict(meta)
    if device is None:
        device = next(iter(model.parameters()), torch.zeros(0)).device
    check_precision(precision, device)
    net = optimize_for_inference(model, fuse=fold_bn, channels_last=channels_last).to(device)
    return InferenceClassifier(net, meta, precision=precision, channels_last=channels_last).to(device)


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
