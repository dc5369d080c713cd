"""``load_classifier``: one call from a file and a backend to an object with ``InferenceClassifier``'s call.

Files: our checkpoints (``.pth``/``.safetensors``; fp32, or int8 from ``tools/quantize.py``), exported ONNX
(``.onnx``) and TorchScript archives (``tools/export.py``). Backends: ``torch`` (the checkpoint's
``InferenceClassifier``, the int8 form of an int8 checkpoint, or a TorchScript archive), ``onnxruntime`` and
``openvino`` (an ``.onnx``; a checkpoint is exported once and the ``.onnx`` cached beside it, keyed by the
checkpoint's content hash). ``backend=None`` picks: ``DEFAULT_CPU_BACKEND`` for fp32 checkpoints on CPU,
the runtime an exported file needs otherwise; a runtime that is not installed then falls back to torch.
A runtime asked for by name is never replaced: its absence is a ``BackendUnavailableError``.

Routed classifiers (``--classifier auto``): a routed checkpoint runs routed on every backend (ONNX Runtime and
OpenVINO get one cached ``.onnx`` per route); several files (``deploy.routed``) load one by one and become a
routed set. ``route_thresholds`` replaces the thresholds either records.
"""
from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import zipfile
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import torch

from ..errors import CheckpointError, UsageError
from ..models.inference import PRECISIONS, check_precision, load_inference_classifier
from ..models.weights import check_meta, load_checkpoint
from ..structures import ClassifierMeta
from ..models.inference import RoutedClassifier
from .export import (EXPORT_VERSION, MIN_OPSET, ExportOptions, export_checkpoint, export_checkpoint_files, is_routed,
                     route_file)
from .routed import assemble, check_thresholds, only_routed, weights_paths
from .quantize import is_quantized, load_int8
from .streams import StreamedClassifier
from .runtimes import (OnnxRuntimeClassifier, OpenVinoClassifier, RuntimeOptions, TorchScriptClassifier,
                       import_runtime)

logger = logging.getLogger(__name__)
PathLike = Union[str, os.PathLike]
BACKENDS = ("torch", "onnxruntime", "openvino")
ALL_PRECISIONS = PRECISIONS + ("int8",)
# What ``backend=None`` runs an fp32 checkpoint with on CPU: the deploy benchmark decides (the fastest fp32
# runtime installed becomes the default when PyTorch cannot match it). Measured side by side (docs/benchmarks.md,
# v3_79 x1, batch 32, 2 threads): ONNX Runtime 1.15x the torch inference form, OpenVINO 1.15x; ONNX Runtime is
# the lighter install. Without it the torch form runs.
DEFAULT_CPU_BACKEND = "onnxruntime"
RUNTIME_CLASSES = {"onnxruntime": OnnxRuntimeClassifier, "openvino": OpenVinoClassifier}
CACHE_ENV = "CROP_CLASSIFIER_CACHE"


def file_kind(path: PathLike) -> str:
    """``onnx``, ``torchscript`` or ``checkpoint`` (TorchScript archives are zips with a ``code/`` folder)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such model file")
    if path.suffix.lower() == ".onnx":
        return "onnx"
    if path.suffix.lower() != ".safetensors" and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any("/code/" in n for n in z.namelist()):
                return "torchscript"
    return "checkpoint"


def installed(backend: str) -> bool:
    """The backend can run a checkpoint: its runtime, and onnx to export the checkpoint (not a dependency of
    onnxruntime or openvino)."""
    needs = {"torch": (), "onnxruntime": ("onnxruntime", "onnx"), "openvino": ("openvino", "onnx")}[backend]
    return all(importlib.util.find_spec(m) is not None for m in needs)


def _check_args(backend: Optional[str], device: Any, precision: str) -> torch.device:
    if backend is not None and backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: valid choices are {', '.join(BACKENDS)}")
    if precision not in ALL_PRECISIONS:
        raise UsageError(f"--precision {precision!r}: valid choices are {', '.join(ALL_PRECISIONS)}")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise UsageError(f"--device {device!r}: {e}") from e
    if backend in RUNTIME_CLASSES and dev.type != "cpu":
        raise UsageError(f"--backend {backend} runs on CPU here; use --backend torch for --device {device}")
    return dev


def _fp32_only(backend: str, precision: str) -> None:
    if precision != "fp32":
        raise UsageError(f"--precision {precision}: the {backend} backend runs fp32 exported models only; "
                         "use --precision fp32 (int8: tools/quantize.py with --backend torch)")


def _cache_dirs(ckpt: Path):
    yield ckpt.parent
    yield Path(os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
               / "crop_classifier" / "onnx")


def _digest_name(ckpt: Path) -> str:
    digest = hashlib.sha256(f"{EXPORT_VERSION}:{MIN_OPSET}:".encode())
    with open(ckpt, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{ckpt.name}.{digest.hexdigest()[:16]}.onnx"


def cached_onnx_files(ckpt: PathLike, expected_meta: Optional[dict] = None, meta: Optional[dict] = None) -> List[Path]:
    """The checkpoint's ONNX export, made once beside it (or in the user cache when that folder is read-only):
    ``NAME.<hash>.onnx``, the hash over the checkpoint's bytes and the export version; a routed checkpoint's
    is one file per route (``NAME.<hash>.v3_79.onnx``, ...). ``meta``: the checkpoint's, when already read."""
    ckpt = Path(ckpt)
    name = _digest_name(ckpt)
    meta = meta if meta is not None else load_checkpoint(ckpt, expected_meta)["meta"]
    archs = (meta.get("routes") or {}).get("archs") if is_routed(meta) else None
    files = lambda base: [route_file(base, a) for a in archs] if archs else [base]  # noqa: E731
    for folder in _cache_dirs(ckpt):
        if all(f.is_file() for f in files(folder / name)):
            return files(folder / name)
    last: Optional[OSError] = None
    for folder in _cache_dirs(ckpt):
        try:
            options = ExportOptions(format="onnx")
            out = export_checkpoint_files(ckpt, folder / name, options, expected_meta) if archs \
                else [export_checkpoint(ckpt, folder / name, options, expected_meta)]
            logger.info("%s: exported to %s (cached)", ckpt, ", ".join(map(str, out)))
            return out
        except OSError as e:  # read-only folder: try the next one
            last = e
    raise CheckpointError(f"{ckpt}: cannot write its ONNX export beside it or in the cache ({last}); "
                          f"set {CACHE_ENV} to a writable folder")


def cached_onnx(ckpt: PathLike, expected_meta: Optional[dict] = None) -> Path:
    """A single-stem checkpoint's cached ``.onnx`` (see ``cached_onnx_files``)."""
    files = cached_onnx_files(ckpt, expected_meta)
    if len(files) != 1:
        raise UsageError(f"{ckpt}: a routed checkpoint has one ONNX file per route (cached_onnx_files)")
    return files[0]


def _load_exported(path: Path, kind: str, backend: Optional[str], dev: torch.device, options: RuntimeOptions):
    if kind == "torchscript":
        if backend not in (None, "torch"):
            raise UsageError(f"--backend {backend}: {path} is a TorchScript file; use --backend torch "
                             "(or export --format onnx for ONNX Runtime/OpenVINO)")
        return TorchScriptClassifier(path, device=dev, options=options)
    if backend == "torch":
        raise UsageError(f"--backend torch: {path} is an ONNX file; use --backend onnxruntime or openvino")
    if dev.type != "cpu":
        raise UsageError(f"--device {dev}: {path} is an ONNX file, run on CPU here (ONNX Runtime/OpenVINO)")
    if backend is None:
        backend = next((b for b in RUNTIME_CLASSES if installed(b)), "onnxruntime")
    return RUNTIME_CLASSES[backend](path, options)


def load_classifier(
    path: Union[PathLike, Sequence[PathLike]],
    backend: Optional[str] = None,
    *,
    device: Any = "cpu",
    precision: str = "fp32",
    expected_meta: Optional[dict] = None,
    options: Optional[RuntimeOptions] = None,
    route_thresholds: Optional[Sequence[float]] = None,
):
    """A classifier with ``InferenceClassifier``'s call (crops [0, 1] -> probs) from any file we write.

    ``path``: one file, or several (a sequence or a comma list) that make a routed set (``deploy.routed``).
    ``backend``: torch | onnxruntime | openvino | None (pick, see module doc). ``precision``: fp32 | bf16 |
    fp16 (torch backend) | int8 (needs an int8 checkpoint; an int8 checkpoint runs int8 whatever the flag
    says as long as it is fp32 or int8). ``expected_meta``: keys the file's meta must match (``arch``,
    ``class_names``, ...). ``options``: thread layout of the CPU runtimes. ``route_thresholds``: a routed
    classifier's thresholds (px) instead of the recorded ones. Errors: ``UsageError`` naming the flag,
    ``BackendUnavailableError`` naming the extra, ``CheckpointError`` naming the file.
    """
    dev = _check_args(backend, device, precision)
    options = (options or RuntimeOptions()).check()
    thresholds = tuple(float(t) for t in route_thresholds) if route_thresholds else None
    paths = weights_paths(path)
    if len(paths) > 1:
        member_meta = {k: v for k, v in (expected_meta or {}).items() if k != "arch"} or None
        members = [_load_one(p, backend, dev, precision, member_meta, options, None) for p in paths]
        return assemble(members, paths, thresholds, (expected_meta or {}).get("arch"))
    return only_routed(_load_one(paths[0], backend, dev, precision, expected_meta, options, thresholds), thresholds,
                       paths[0])


def _load_one(path: Path, backend: Optional[str], dev: torch.device, precision: str, expected_meta: Optional[dict],
              options: RuntimeOptions, thresholds: Optional[Sequence[float]]):
    kind = file_kind(path)
    if kind != "checkpoint":
        _fp32_only(backend or kind, precision)
        clf = _load_exported(path, kind, backend, dev, options)
        check_meta(clf.meta.to_dict(), expected_meta, path)
        return clf
    meta = load_checkpoint(path, expected_meta)["meta"]
    if is_quantized(meta):
        if backend not in (None, "torch"):
            raise UsageError(f"--backend {backend}: {path} is an int8 checkpoint, which runs with --backend torch "
                             "only (export the fp32 checkpoint for ONNX Runtime/OpenVINO)")
        if precision not in ("fp32", "int8"):
            raise UsageError(f"--precision {precision}: {path} is an int8 checkpoint; use --precision int8")
        return load_int8(path, device=dev, expected_meta=expected_meta)
    if precision == "int8" and is_routed(meta):
        raise UsageError(f"--precision int8: {path} is an fp32 routed (auto) checkpoint; tools/quantize.py --weights "
                         "CKPT --output INT8.pth writes one int8 checkpoint per route (INT8.v3_79.pth, ...): run "
                         "those with --classifier-weights INT8.pth --precision int8")
    if precision == "int8":
        raise UsageError(f"--precision int8: {path} is an fp32 checkpoint; make an int8 one with "
                         "tools/quantize.py --weights CKPT --output INT8.pth and load that")
    chosen = backend or (DEFAULT_CPU_BACKEND if dev.type == "cpu" and precision == "fp32" else "torch")
    if backend is None and not installed(chosen):
        logger.info("%s is not installed: running the classifier with torch", chosen)
        chosen = "torch"
    if chosen == "torch":
        check_precision(precision, dev)
        clf = load_inference_classifier(path, device=dev, expected_meta=expected_meta, precision=precision,
                                        route_thresholds=thresholds)
        return _streamed(clf, options)
    _fp32_only(chosen, precision)
    import_runtime(chosen)  # missing runtime asked for by name: say which extra, before exporting anything
    if is_routed(meta):
        routes = (meta.get("routes") or {}).get("archs") or []
        check_thresholds(routes, thresholds)  # before exporting anything
        files = cached_onnx_files(path, expected_meta, meta)
        return assemble([RUNTIME_CLASSES[chosen](f, options) for f in files], files, thresholds)
    return RUNTIME_CLASSES[chosen](cached_onnx_files(path, expected_meta, meta)[0], options)


def _streamed(clf: Any, options: RuntimeOptions) -> Any:
    """The torch form on ``options.streams`` parallel CPU streams (a routed form: each route's)."""
    if options.streams == 1:
        return clf
    if isinstance(clf, RoutedClassifier):
        return RoutedClassifier([_streamed(c, options) for c in clf.classifiers], clf.routes, clf.meta)
    return StreamedClassifier(clf, options.streams, options.threads or 1)


def describe(clf: Any) -> str:
    """One line for logs: backend, precision, file."""
    meta: ClassifierMeta = clf.meta
    routes = getattr(clf, "routes", None)
    one = clf.classifiers[0] if routes is not None else clf
    backend = getattr(one, "backend", "torch")
    precision = "int8" if is_quantized(one.meta) else getattr(one, "precision", "fp32")
    arch = meta.arch if routes is None else f"{meta.arch} ({routes.describe()})"
    return f"{arch} x{meta.width:g} ({meta.num_classes} classes) on {backend}, {precision}, {clf.device}"
