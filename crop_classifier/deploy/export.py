"""Export the classifier's inference form to ONNX or TorchScript, with its meta inside the file.

The exported graph is ``InferenceClassifier``'s: input ``crops`` float ``[N, 3, S, S]`` RGB in [0, 1];
outputs ``logits`` and ``probs`` (``[N, K]``), normalisation (the meta's mean/std) and BN folding inside.
Both outputs are kept: runtimes return ``probs`` like ``InferenceClassifier`` and parity tests compare
``logits``. The checkpoint meta (``ClassifierMeta.to_dict()``) travels in the file (ONNX ``metadata_props``,
TorchScript ``_extra_files``) under ``META_KEY``, so the file alone runs the second stage.
"""
from __future__ import annotations

import inspect
import io
import json
import os
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..errors import BackendUnavailableError, CheckpointError, UsageError
from ..structures import ClassifierMeta
from ..utils.io import atomic_write_bytes
from ..models.inference import InferenceClassifier, RoutedClassifier, build_inference_classifier
from ..models.routing import ROUTED_ARCH
from ..models.weights import check_meta, classifier_from_checkpoint, load_checkpoint

PathLike = Union[str, os.PathLike]
FORMATS = ("onnx", "torchscript")
META_KEY = "crop_classifier_meta"
FORMAT_VERSION_KEY = "crop_classifier_export_version"
EXPORT_VERSION = "1"
INPUT_NAME = "crops"
OUTPUT_NAMES = ("logits", "probs")
MIN_OPSET = 17
TORCHSCRIPT_META_FILE = META_KEY + ".json"
# A routed checkpoint's per-route files carry the whole set's routes under this meta key, so the files
# reassemble into the routed classifier with its thresholds (``deploy.routed``).
ROUTE_SET_KEY = "route_set"


@dataclass
class ExportOptions:
    """``static_batch``: a fixed batch size (TensorRT engines like static shapes); None = dynamic batch."""

    format: str = "onnx"
    opset: int = MIN_OPSET
    static_batch: Optional[int] = None

    def check(self) -> "ExportOptions":
        if self.format not in FORMATS:
            raise UsageError(f"--format {self.format!r}: valid choices are {', '.join(FORMATS)}")
        if isinstance(self.opset, bool) or not isinstance(self.opset, int) or self.opset < MIN_OPSET:
            raise UsageError(f"--opset {self.opset!r}: must be an integer >= {MIN_OPSET}")
        if self.static_batch is not None and (isinstance(self.static_batch, bool) or int(self.static_batch) < 1):
            raise UsageError(f"--static-batch {self.static_batch!r}: must be a positive integer")
        return self


class ExportForm(nn.Module):
    """``InferenceClassifier`` as a plain traceable module (no inference_mode/autocast contexts to trace):
    crops [0, 1] -> (logits, probs), through the form's own normalisation and folded network."""

    def __init__(self, form: InferenceClassifier):
        super().__init__()
        self.form = form

    @property
    def meta(self) -> ClassifierMeta:
        return self.form.meta

    def forward(self, crops: Tensor):
        logits = self.form.net(self.form.normalise(crops))
        return logits, torch.softmax(logits, dim=1)


def export_form(model: nn.Module, meta: Any) -> ExportForm:
    """The folded fp32 CPU inference form of ``model`` (untouched) as an ``ExportForm``."""
    return ExportForm(build_inference_classifier(model, meta, device="cpu", precision="fp32", channels_last=False)).eval()


def meta_json(meta: ClassifierMeta) -> str:
    return json.dumps(meta.to_dict(), sort_keys=True)


def _has_dynamo_flag() -> bool:
    return "dynamo" in inspect.signature(torch.onnx.export).parameters


def _torch_onnx_export(form: nn.Module, example: Tensor, path: str, dynamic: Optional[dict], opset: int) -> None:
    """torch >= 2.9 defaults to the dynamo exporter; the TorchScript-based one handles this model's dynamic
    batch the same way on every version we support, so it is asked for where the flag exists. Should a
    future torch drop it, the dynamo exporter (``dynamic_axes`` still accepted there) is the fallback."""
    kwargs = dict(input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic,
                  opset_version=opset, do_constant_folding=True)
    if not _has_dynamo_flag():
        torch.onnx.export(form, (example,), path, **kwargs)
        return
    try:
        torch.onnx.export(form, (example,), path, dynamo=False, **kwargs)
    except (RuntimeError, NotImplementedError, TypeError) as legacy_error:
        try:
            torch.onnx.export(form, (example,), path, dynamo=True, **kwargs)
        except Exception as e:
            raise RuntimeError(f"ONNX export failed with both exporters: TorchScript-based: {legacy_error}; "
                               f"dynamo: {e}") from e


def onnx_bytes(form: ExportForm, meta: ClassifierMeta, options: ExportOptions) -> bytes:
    """The ONNX file's bytes, meta in ``metadata_props``."""
    try:
        import onnx
    except ImportError as e:
        raise BackendUnavailableError(f"exporting to ONNX needs the onnx package ({e}); install it with: "
                                      "pip install crop_classifier[onnx]") from e

    batch = options.static_batch or 2
    example = torch.rand(batch, 3, meta.input_size, meta.input_size)
    dynamic = None if options.static_batch else {n: {0: "batch"} for n in (INPUT_NAME, *OUTPUT_NAMES)}
    with tempfile.TemporaryDirectory() as tmp:  # a path, not a buffer: both exporters accept it
        path = os.path.join(tmp, "model.onnx")
        with torch.no_grad():
            _torch_onnx_export(form, example, path, dynamic, options.opset)
        model = onnx.load(path)
    onnx.checker.check_model(model)
    del model.metadata_props[:]
    for key, value in ((META_KEY, meta_json(meta)), (FORMAT_VERSION_KEY, EXPORT_VERSION)):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "crop_classifier"
    return model.SerializeToString()


def torchscript_bytes(form: ExportForm, meta: ClassifierMeta, options: ExportOptions) -> bytes:
    """The TorchScript archive's bytes (traced, meta in ``_extra_files``)."""
    example = torch.rand(options.static_batch or 2, 3, meta.input_size, meta.input_size)
    with torch.no_grad():
        traced = torch.jit.trace(form, (example,), check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf, _extra_files={TORCHSCRIPT_META_FILE: meta_json(meta),
                                              FORMAT_VERSION_KEY: EXPORT_VERSION})
    return buf.getvalue()


def _check_exportable(meta: ClassifierMeta) -> None:
    if meta.extra.get("quantized"):
        raise UsageError("an int8 (quantized) checkpoint cannot be exported; export the fp32 checkpoint and "
                         "quantize in the target runtime")


def _file_bytes(form: ExportForm, meta: ClassifierMeta, options: ExportOptions) -> bytes:
    return (onnx_bytes if options.format == "onnx" else torchscript_bytes)(form, meta, options)


def is_routed(meta: Any) -> bool:
    """A routed (``auto``) classifier's meta (dict or ``ClassifierMeta``)."""
    d = meta.to_dict() if isinstance(meta, ClassifierMeta) else meta
    return d.get("arch") == ROUTED_ARCH or bool(d.get("routes"))


def route_file(output: PathLike, arch: str) -> Path:
    """Where a routed export writes ``arch``'s file: ``out.onnx`` -> ``out.v3_79.onnx``."""
    output = Path(output)
    return output.with_name(f"{output.stem}.{arch}{output.suffix}")


def export_model(model: nn.Module, meta: Any, output: PathLike, options: Optional[ExportOptions] = None) -> Path:
    """Exports ``model`` (a single-stem classifier, meta as dict or ``ClassifierMeta``) to ``output`` atomically."""
    options = (options or ExportOptions()).check()
    meta = meta if isinstance(meta, ClassifierMeta) else ClassifierMeta.from_dict(meta)
    _check_exportable(meta)
    if is_routed(meta):
        raise UsageError(f"{meta.arch}: a routed classifier exports one file per route (export_routed_model)")
    return atomic_write_bytes(output, _file_bytes(export_form(model, meta), meta, options))


def export_routed_model(model: nn.Module, meta: Any, output: PathLike, options: Optional[ExportOptions] = None,
                        thresholds: Optional[Sequence[float]] = None) -> List[Path]:
    """A routed model as one file per route (``route_file(output, arch)``), each its route's plain graph with
    that route's meta plus the set's routes (``ROUTE_SET_KEY``; ``thresholds``: other than the meta's). All
    files are built before any is written."""
    options = (options or ExportOptions()).check()
    meta = meta if isinstance(meta, ClassifierMeta) else ClassifierMeta.from_dict(meta)
    _check_exportable(meta)
    routed = build_inference_classifier(model, meta, device="cpu", precision="fp32", channels_last=False,
                                        route_thresholds=thresholds)
    if not isinstance(routed, RoutedClassifier):
        raise UsageError(f"{meta.arch}: not a routed classifier; export it with export_model")
    files = []
    for arch, size in zip(routed.routes.archs, routed.routes.input_sizes):
        form = routed.route(size)
        route_meta = replace(form.meta, extra={**form.meta.extra, ROUTE_SET_KEY: routed.routes.to_meta()})
        files.append((route_file(output, arch), _file_bytes(ExportForm(form).eval(), route_meta, options)))
    return [atomic_write_bytes(path, data) for path, data in files]


def export_checkpoint(weights: PathLike, output: PathLike, options: Optional[ExportOptions] = None,
                      expected_meta: Optional[dict] = None) -> Path:
    """Exports one of our single-stem checkpoints (``.pth``/``.safetensors``) to ``output`` atomically
    (a routed one: ``export_checkpoint_files``)."""
    meta = load_checkpoint(weights, expected_meta)["meta"]
    if meta.get("quantized"):
        raise UsageError(f"{weights}: an int8 (quantized) checkpoint cannot be exported; export the fp32 checkpoint")
    if is_routed(meta):
        raise UsageError(f"{weights}: a routed (auto) checkpoint exports one file per route "
                         "(export_checkpoint_files, tools/export.py)")
    model, meta = classifier_from_checkpoint(weights, expected_meta=expected_meta)
    return export_model(model, meta, output, options)


def export_checkpoint_files(weights: PathLike, output: PathLike, options: Optional[ExportOptions] = None,
                            expected_meta: Optional[dict] = None,
                            thresholds: Optional[Sequence[float]] = None) -> List[Path]:
    """Any fp32 checkpoint: ``[output]`` for a single stem, one file per route for a routed one."""
    meta = load_checkpoint(weights, expected_meta)["meta"]
    if not is_routed(meta):
        if thresholds:
            raise UsageError(f"--route-thresholds: {weights} is a single-stem ({meta['arch']}) checkpoint; "
                             "thresholds belong to a routed (auto) one")
        return [export_checkpoint(weights, output, options, expected_meta)]
    if meta.get("quantized"):
        raise UsageError(f"{weights}: an int8 (quantized) checkpoint cannot be exported; export the fp32 checkpoint")
    model, meta = classifier_from_checkpoint(weights, expected_meta=expected_meta)
    return export_routed_model(model, meta, output, options, thresholds)


def parse_meta(raw: Optional[str], path: PathLike) -> ClassifierMeta:
    """The embedded meta of an exported file; ``CheckpointError`` naming the file when missing or bad."""
    if not raw:
        raise CheckpointError(f"{path}: no {META_KEY!r} metadata: not exported by tools/export.py (the file "
                              "alone cannot say its classes, input size and normalisation); re-export it")
    try:
        meta = json.loads(raw)
        check_meta(meta, None, path)
        return ClassifierMeta.from_dict(meta)
    except (ValueError, KeyError, TypeError) as e:
        if isinstance(e, CheckpointError):
            raise
        raise CheckpointError(
            f"{path}: the embedded {META_KEY!r} metadata is unusable ({type(e).__name__}: {e})") from e
