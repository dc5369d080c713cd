"""``load_classifier``: one call from a file and a backend to an object with ``InferenceClassifier``'s call.

Files: our checkpoints (``.pth``/``.safetensors``; fp32, or int8 from ``tools/quantize.py``), exported ONNX
(``.onnx``) and TorchScript archives (``tools/export.py``). Backends: ``torch`` (the checkpoint's
``InferenceClassifier``, the int8 form of an int8 checkpoint, or a TorchScript archive), ``onnxruntime`` and
``openvino`` (an ``.onnx``; a checkpoint is exported once into the one cache folder, ``cache_root()/onnx``,
keyed by the checkpoint's content hash and the export version, old entries of the same checkpoint path and
the least recently used beyond ``CACHE_MAX_MB`` pruned). ``precision=None`` picks the form from the hardware
(``deploy.forms``: bf16 on the fastest bf16 runtime where the CPU has native bf16, behind a decisions guard;
fp32 elsewhere). ``backend=None`` picks: ``DEFAULT_CPU_BACKEND`` for fp32 checkpoints on CPU, OpenVINO for
bf16 on CPU, the runtime an exported file needs otherwise; a runtime that is not installed then falls back to
torch. A runtime asked for by name is never replaced: its absence is a ``BackendUnavailableError``. Every
classifier returned says which form runs and why in ``.form`` (``describe``).

Routed classifiers (``--classifier auto``): a routed checkpoint runs routed on every backend (ONNX Runtime and
OpenVINO get one cached ``.onnx`` per route); several files (``deploy.routed``) load one by one and become a
routed set. ``route_thresholds`` replaces the thresholds either records.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Union

import torch

from ..errors import CheckpointError, ParameterError, UsageError
from ..models.inference import PRECISIONS, check_precision, cpu_features, load_inference_classifier
from ..models.weights import check_meta, load_checkpoint
from ..structures import ClassifierMeta
from ..utils.io import atomic_write_text
from ..models.inception_v3 import STEMS
from ..models.inference import RoutedClassifier
from .export import (EXPORT_VERSION, MIN_OPSET, ExportOptions, export_checkpoint, export_checkpoint_files, is_routed,
                     route_file)
from .int8_onnx import saturation_risk
from .forms import Form, auto_plan, bf16_verdict, compare_decisions, form_of, guard_reason
from .routed import assemble, check_thresholds, only_routed, weights_paths
from .quantize import is_quantized, load_int8
from .streams import StreamedClassifier
from .runtimes import (OnnxRuntimeClassifier, OpenVinoClassifier, RuntimeOptions, TorchScriptClassifier,
                       import_runtime, onnx_is_int8)

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


def _check_args(backend: Optional[str], device: Any, precision: Optional[str]) -> torch.device:
    if device is None:  # as tools/infer.py: the GPU when there is one, else the CPU
        device = "cuda" if torch.cuda.is_available() and backend in (None, "torch") else "cpu"
    if backend is not None and backend not in BACKENDS:
        raise ParameterError("backend", f"expected one of {', '.join(BACKENDS)}, got {backend!r}")
    if precision is not None and precision not in ALL_PRECISIONS:
        raise ParameterError("precision", f"expected one of {', '.join(ALL_PRECISIONS)}, got {precision!r}")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ParameterError("device", f"{device!r}: {e}") from e
    if backend in RUNTIME_CLASSES and dev.type != "cpu":
        raise ParameterError("backend", f"{backend} runs on CPU here; the torch backend runs on {device}")
    return dev


CACHE_MAX_ENV = "CROP_CLASSIFIER_CACHE_MAX_MB"
CACHE_MAX_MB = 4096  # the export cache's bound: least recently used entries go first beyond it
_INDEX = "index.json"


def cache_root() -> Path:
    """The one cache folder: ``$CROP_CLASSIFIER_CACHE``, else ``$XDG_CACHE_HOME/crop_classifier`` (default
    ``~/.cache/crop_classifier``). Exports live in its ``onnx/``, the bf16 guard's verdicts beside them."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "crop_classifier"


def checkpoint_digest(ckpt: PathLike) -> str:
    """The first 16 hex digits of the SHA-256 of the file's bytes (what cache entries are keyed by)."""
    digest = hashlib.sha256()
    with open(ckpt, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def _entry_name(ckpt: Path) -> str:
    """``NAME-<content hash>-e<export version>o<opset>.onnx``: a new checkpoint or exporter is a new entry."""
    return f"{ckpt.stem}-{checkpoint_digest(ckpt)}-e{EXPORT_VERSION}o{MIN_OPSET}.onnx"


def _entry_of(name: str) -> str:
    """The entry a cache file belongs to: ``X.v3_79.onnx`` (a route's file) -> ``X.onnx``."""
    for arch in STEMS:
        if name.endswith(f".{arch}.onnx"):
            return name[:-len(f".{arch}.onnx")] + ".onnx"
    return name


def _entries(folder: Path) -> dict:
    """entry name -> its files (the ``.onnx`` and a routed checkpoint's per-route files)."""
    out: dict = {}
    for f in folder.iterdir():
        if f.suffix == ".onnx":
            out.setdefault(_entry_of(f.name), []).append(f)
    return out


def _read_index(folder: Path) -> dict:
    try:
        index = json.loads((folder / _INDEX).read_text())
        return index if isinstance(index, dict) else {}
    except (OSError, ValueError):
        return {}


def prune_cache(folder: Path, path_key: str, base: str, max_bytes: Optional[int] = None) -> List[Path]:
    """After entry ``base`` was made (or used) for checkpoint ``path_key``: drops the entry that path had
    before (a retrained or edited checkpoint's old export) unless another checkpoint path still uses it, then
    whole entries, least recently used first, while the folder is over ``max_bytes`` (default
    ``CACHE_MAX_MB``, or ``$CROP_CLASSIFIER_CACHE_MAX_MB``); ``base`` itself stays. Returns the files removed."""
    if max_bytes is None:
        max_bytes = int(float(os.environ.get(CACHE_MAX_ENV) or CACHE_MAX_MB) * 2**20)
    index = _read_index(folder)
    old = index.get(path_key)
    index[path_key] = base
    entries = _entries(folder)
    drop = {old} if old and old != base and old not in set(index.values()) else set()
    total = sum(f.stat().st_size for name, files in entries.items() if name not in drop for f in files)
    by_age = sorted((e for e in entries if e not in drop and e != base),
                    key=lambda e: max(f.stat().st_mtime for f in entries[e]))
    for name in by_age:  # oldest first
        if total <= max_bytes:
            break
        drop.add(name)
        total -= sum(f.stat().st_size for f in entries[name])
    gone = sorted(f for name in drop for f in entries.get(name, []))
    for f in gone:
        f.unlink(missing_ok=True)
    index = {k: v for k, v in index.items() if v in entries and v not in drop}
    atomic_write_text(folder / _INDEX, json.dumps(index, indent=1, sort_keys=True))
    return gone


def cached_onnx_files(ckpt: PathLike, expected_meta: Optional[dict] = None, meta: Optional[dict] = None) -> List[Path]:
    """The checkpoint's ONNX export, made once into the cache folder (``cache_root()/onnx``), keyed by the
    checkpoint's content hash and the export version (``_entry_name``); a routed checkpoint's is one file per
    route (``...v3_79.onnx``, ...). Making an entry prunes the cache (``prune_cache``). ``meta``: the
    checkpoint's, when already read."""
    ckpt = Path(ckpt)
    folder = cache_root() / "onnx"
    base = folder / _entry_name(ckpt)
    meta = meta if meta is not None else load_checkpoint(ckpt, expected_meta)["meta"]
    archs = (meta.get("routes") or {}).get("archs") if is_routed(meta) else None
    files = [route_file(base, a) for a in archs] if archs else [base]
    if all(f.is_file() for f in files):
        try:
            for f in files:
                os.utime(f)  # recently used: pruned last
            if _read_index(folder).get(str(ckpt.resolve())) != base.name:  # this path's entry changed
                prune_cache(folder, str(ckpt.resolve()), base.name)
        except OSError:  # a read-only cache still serves what it holds
            pass
        return files
    try:
        folder.mkdir(parents=True, exist_ok=True)
        options = ExportOptions(format="onnx")
        out = export_checkpoint_files(ckpt, base, options, expected_meta) if archs \
            else [export_checkpoint(ckpt, base, options, expected_meta)]
        prune_cache(folder, str(ckpt.resolve()), base.name)
    except OSError as e:
        raise CheckpointError(f"{ckpt}: cannot write its ONNX export to the cache {folder} ({e}); set {CACHE_ENV} "
                              "to a writable folder") from e
    logger.info("%s: exported to %s (cached)", ckpt, ", ".join(map(str, out)))
    return out


def cached_onnx(ckpt: PathLike, expected_meta: Optional[dict] = None) -> Path:
    """A single-stem checkpoint's cached ``.onnx`` (see ``cached_onnx_files``)."""
    files = cached_onnx_files(ckpt, expected_meta)
    if len(files) != 1:
        raise UsageError(f"{ckpt}: a routed checkpoint has one ONNX file per route (cached_onnx_files)")
    return files[0]


@dataclass
class _Request:
    """What every file of one ``load_classifier`` call is loaded with."""

    dev: torch.device
    expected_meta: Optional[dict]
    options: RuntimeOptions
    thresholds: Optional[Sequence[float]]


def _runtime(backend: str, path: Path, options: RuntimeOptions, precision: str):
    if backend == "openvino":
        return OpenVinoClassifier(path, options, "bf16" if precision == "bf16" else "fp32")
    return OnnxRuntimeClassifier(path, options)


def _check_runtime_precision(backend: str, precision: str, dev: torch.device, path: Path) -> None:
    """ONNX Runtime runs fp32 (and int8 files); OpenVINO also bf16 on a CPU with native bf16."""
    if backend == "openvino" and precision == "bf16":
        check_precision("bf16", dev)  # no native bf16: the usage error saying so
        return
    if precision not in ("fp32", "int8"):
        raise ParameterError("precision", f"{precision}: the {backend} backend runs {path} in fp32 (OpenVINO also "
                             "in bf16 on a CPU with native bf16); use fp32 (int8: tools/quantize.py)")


def _load_exported(path: Path, kind: str, backend: Optional[str], precision: Optional[str], req: _Request):
    if kind == "torchscript":
        if backend not in (None, "torch"):
            raise ParameterError("backend", f"{backend}: {path} is a TorchScript file, which runs on torch (export "
                                 "--format onnx for ONNX Runtime/OpenVINO)")
        if precision not in (None, "fp32"):
            raise ParameterError("precision", f"{precision}: {path} is a TorchScript file, which runs fp32")
        clf = TorchScriptClassifier(path, device=req.dev, options=req.options)
        return _with_form(clf, Form("torchscript", "fp32", "a TorchScript file runs as exported (fp32)"))
    if backend == "torch":
        raise ParameterError("backend", f"torch: {path} is an ONNX file, which runs on onnxruntime or openvino")
    if req.dev.type != "cpu":
        raise ParameterError("device", f"{req.dev}: {path} is an ONNX file, run on CPU here (ONNX Runtime/OpenVINO)")
    runtime_installed = lambda b: importlib.util.find_spec(b) is not None  # noqa: E731
    if precision in (None, "fp32", "int8") and onnx_is_int8(path):
        # OpenVINO runs a QDQ int8 graph fastest (about 2x ONNX Runtime on the same file, docs/benchmarks.md)
        chosen = backend or ("openvino" if runtime_installed("openvino") else "onnxruntime")
        clf = _runtime(chosen, path, req.options, "fp32")
        reason = f"an int8 model ({path.name}) runs its int8 layers on {chosen}"
        risk = saturation_risk(clf.meta, cpu_features())
        if risk:  # it runs (a documented fallback, not an error): the summary and the log say why to redo it
            logger.warning("%s: %s", path, risk)
            reason += f"; {risk}"
        return _with_form(clf, Form(chosen, "int8", reason))
    if precision is None:
        plan = auto_plan(backend, req.dev, next((b for b in RUNTIME_CLASSES if runtime_installed(b)), "onnxruntime"),
                         runtime_installed)
        return _guarded(plan, path, backend, lambda b, p: _runtime(b, path, req.options, p), None)
    chosen = backend or ("openvino" if precision == "bf16" else
                         next((b for b in RUNTIME_CLASSES if runtime_installed(b)), "onnxruntime"))
    _check_runtime_precision(chosen, precision, req.dev, path)
    if precision == "int8":
        raise ParameterError("precision", f"int8: {path} is an fp32 ONNX file; make an int8 one with "
                             "tools/quantize.py --format onnx (or openvino) and load that")
    clf = _runtime(chosen, path, req.options, precision)
    return _with_form(clf, Form(chosen, clf.precision, _asked(precision)))


def _asked(precision: str) -> str:
    return f"precision {precision} asked for"


def _with_form(clf: Any, form: Form) -> Any:
    clf.form = form.to_dict()
    return clf


def _guarded(plan: Form, path: Path, backend: Optional[str], build, reference) -> Any:
    """``build(plan.backend, plan.precision)``; a bf16 plan passes the bf16 guard first (``deploy.forms``):
    ``reference()`` (default ``build(plan.backend, "fp32")``) gives the fp32 decisions it is held to, and a
    failed guard builds fp32 instead (on ``backend``, or the fp32 default), saying so."""
    clf = build(plan.backend, plan.precision)
    if plan.precision != "bf16":
        return _with_form(clf, plan)
    meta = clf.meta if isinstance(clf.meta, ClassifierMeta) else ClassifierMeta.from_dict(clf.meta)
    key = f"{checkpoint_digest(path)}:{plan.backend}:bf16"
    verdict = bf16_verdict(cache_root(), key, lambda: compare_decisions(
        reference() if reference else build(plan.backend, "fp32"), clf, meta))
    if verdict["ok"]:
        return _with_form(clf, Form(plan.backend, "bf16", guard_reason(plan, verdict)))
    fallback = backend or (DEFAULT_CPU_BACKEND if installed(DEFAULT_CPU_BACKEND) else "torch")
    reason = guard_reason(plan, verdict)
    logger.warning("%s: %s", path, reason)
    return _with_form(build(fallback, "fp32"), Form(fallback, "fp32", reason))


def load_classifier(
    path: Union[PathLike, Sequence[PathLike]],
    backend: Optional[str] = None,
    *,
    device: Any = None,
    precision: Optional[str] = None,
    expected_meta: Optional[dict] = None,
    options: Optional[RuntimeOptions] = None,
    route_thresholds: Optional[Sequence[float]] = None,
):
    """A classifier with ``InferenceClassifier``'s call (crops [0, 1] -> probs) from any file we write.

    Args:
        path: one file, or several (a sequence or a comma list) that make a routed set (``deploy.routed``).
        backend: torch | onnxruntime | openvino | None (pick, see module doc).
        device: where it runs (None: cuda when available, else cpu; the CPU runtimes and int8: cpu only).
        precision: None (auto: bf16 on the fastest bf16 runtime where the CPU has native bf16, after the
            decisions guard; fp32 elsewhere; ``deploy.forms``) | fp32 (exact everywhere) | bf16 (a GPU, or a
            CPU with native bf16: torch autocast or OpenVINO's bf16 hint) | fp16 (GPU, torch) | int8 (needs an
            int8 checkpoint or .onnx; an int8 file runs int8 whatever the flag says as long as it is None,
            fp32 or int8).
        expected_meta: keys the file's meta must match (``arch``, ``class_names``, ...).
        options: thread layout of the CPU runtimes.
        route_thresholds: a routed classifier's thresholds (px) instead of the recorded ones.

    Returns:
        The classifier: crops ``[N, 3, S, S]`` in [0, 1] -> probabilities ``[N, K]``, with ``.form``
        (``{"backend", "precision", "reason"}``: which form runs and why).

    Errors: ``ParameterError`` naming the parameter (``precision``, ``backend``, ``device``, ``path``,
    ``route_thresholds``, ``streams``, ...; front ends put it in their own words, ``flag_error``/``d2_error``),
    ``BackendUnavailableError`` naming the extra, ``CheckpointError`` naming the file.
    """
    dev = _check_args(backend, device, precision)
    req = _Request(dev, expected_meta, (options or RuntimeOptions()).check(),
                   tuple(float(t) for t in route_thresholds) if route_thresholds else None)
    paths = weights_paths(path)
    if len(paths) > 1:
        member_meta = {k: v for k, v in (expected_meta or {}).items() if k != "arch"} or None
        members = [_load_one(p, backend, precision, _Request(dev, member_meta, req.options, None)) for p in paths]
        routed = assemble(members, paths, req.thresholds, (expected_meta or {}).get("arch"))
        return _with_form(routed, Form(**{**members[0].form, "reason": "; ".join(
            dict.fromkeys(m.form["reason"] for m in members))}))
    return only_routed(_load_one(paths[0], backend, precision, req), req.thresholds, paths[0])


def _load_one(path: Path, backend: Optional[str], precision: Optional[str], req: _Request):
    kind = file_kind(path)
    if kind != "checkpoint":
        clf = _load_exported(path, kind, backend, precision, req)
        check_meta(clf.meta.to_dict(), req.expected_meta, path)
        return clf
    meta = load_checkpoint(path, req.expected_meta)["meta"]
    if is_quantized(meta):
        if backend not in (None, "torch"):
            raise ParameterError("backend", f"{backend}: {path} is an int8 checkpoint, which runs on torch only "
                                 "(export the fp32 checkpoint for ONNX Runtime/OpenVINO)")
        if precision not in (None, "fp32", "int8"):
            raise ParameterError("precision", f"{precision}: {path} is an int8 checkpoint, which runs int8")
        return _with_form(load_int8(path, device=req.dev, expected_meta=req.expected_meta),
                          Form("torch", "int8", "an int8 checkpoint (FX, x86 kernels)"))
    if precision == "int8" and is_routed(meta):
        raise ParameterError("precision", f"int8: {path} is an fp32 routed (auto) checkpoint; tools/quantize.py "
                             "--weights CKPT --output INT8.pth writes one int8 checkpoint per route "
                             "(INT8.v3_79.pth, ...): load INT8.pth (that set) in int8")
    if precision == "int8":
        raise ParameterError("precision", f"int8: {path} is an fp32 checkpoint; make an int8 one with "
                             "tools/quantize.py --weights CKPT --output INT8.pth (or INT8.onnx) and load that")
    build = lambda b, p: _build(path, meta, b, p, req)  # noqa: E731
    if precision is None:
        plan = auto_plan(backend, req.dev, DEFAULT_CPU_BACKEND, installed)
        return _guarded(plan, path, backend, build, lambda: build("torch", "fp32"))
    chosen = backend or _explicit_backend(precision, req.dev)
    if backend is None and not installed(chosen):
        logger.info("%s is not installed: running the classifier with torch", chosen)
        chosen = "torch"
    return _with_form(build(chosen, precision), Form(chosen, precision, _asked(precision)))


def _explicit_backend(precision: str, dev: torch.device) -> str:
    """``backend=None`` with a precision asked for: fp32 on the CPU default; bf16 on the fastest bf16 runtime
    (OpenVINO) once the CPU is known to have native bf16; GPU precisions on torch."""
    if dev.type != "cpu":
        return "torch"
    if precision == "bf16":
        check_precision("bf16", dev)
        return "openvino"
    return DEFAULT_CPU_BACKEND if precision == "fp32" else "torch"


def _build(path: Path, meta: dict, chosen: str, precision: str, req: _Request):
    """The checkpoint's classifier on ``chosen`` at ``precision`` (a routed checkpoint: routed)."""
    if chosen == "torch":
        check_precision(precision, req.dev)
        clf = load_inference_classifier(path, device=req.dev, expected_meta=req.expected_meta, precision=precision,
                                        route_thresholds=req.thresholds)
        return _streamed(clf, req.options)
    _check_runtime_precision(chosen, precision, req.dev, path)
    import_runtime(chosen)  # missing runtime asked for by name: say which extra, before exporting anything
    if is_routed(meta):
        routes = (meta.get("routes") or {}).get("archs") or []
        check_thresholds(routes, req.thresholds)  # before exporting anything
        files = cached_onnx_files(path, req.expected_meta, meta)
        return assemble([_runtime(chosen, f, req.options, precision) for f in files], files, req.thresholds)
    return _runtime(chosen, cached_onnx_files(path, req.expected_meta, meta)[0], req.options, precision)


def _streamed(clf: Any, options: RuntimeOptions) -> Any:
    """The torch form on ``options.streams`` parallel CPU streams (a routed form: each route's)."""
    if options.streams == 1:
        return clf
    if isinstance(clf, RoutedClassifier):
        return RoutedClassifier([_streamed(c, options) for c in clf.classifiers], clf.routes, clf.meta)
    return StreamedClassifier(clf, options.streams, options.threads or 1)


def describe(clf: Any) -> str:
    """One line for logs and summary.json: arch, backend, precision, device, and why that form (``clf.form``)."""
    meta: ClassifierMeta = clf.meta
    routes = getattr(clf, "routes", None)
    form = form_of(clf)
    arch = meta.arch if routes is None else f"{meta.arch} ({routes.describe()})"
    return (f"{arch} x{meta.width:g} ({meta.num_classes} classes) on {form['backend']}, {form['precision']}, "
            f"{clf.device}: {form['reason']}")
