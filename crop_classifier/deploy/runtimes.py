"""Runtimes that run an exported classifier with ``InferenceClassifier``'s call: crops float ``[N, 3, S, S]``
in [0, 1] -> probabilities ``[N, K]`` (float32 torch tensors), ``.logits(x)``, ``.meta`` (``ClassifierMeta``),
``.crop``, ``.class_names``, ``.input_size``, ``.device``.

CPU thread layouts (``RuntimeOptions``): ``streams=1, threads=N`` runs one batch on N threads;
``streams=N, threads=1`` splits the batch into N parts run in parallel, one thread each (Inception's many
small convolutions parallelise poorly inside one op, so parallel streams can win on batches).
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List, Optional, Union

import numpy as np
import torch
from torch import Tensor

from ..errors import BackendUnavailableError, CheckpointError, ParameterError
from ..structures import ClassifierMeta
from .export import INPUT_NAME, META_KEY, OUTPUT_NAMES, TORCHSCRIPT_META_FILE, parse_meta

PathLike = Union[str, os.PathLike]
EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino", "onnx": "onnx"}


def import_runtime(module: str):
    """Imports an optional runtime; ``BackendUnavailableError`` naming the extra to install when missing."""
    try:
        return __import__(module)
    except ImportError as e:
        extra = EXTRAS.get(module, module)
        raise BackendUnavailableError(
            f"the {module} runtime is not installed ({e}); "
            f"install it with: pip install crop_classifier[{extra}]") from e


def check_positive(param: str, value: Any) -> None:
    """``ParameterError`` naming ``param`` unless ``value`` is an integer >= 1 (a bool is not one)."""
    if isinstance(value, bool) or int(value) < 1:
        raise ParameterError(param, f"expected a positive integer, got {value!r}")


@dataclass
class RuntimeOptions:
    """``threads``: threads per stream (None: the runtime's default, all cores); ``streams``: parallel
    streams a batch is split over; ``hint`` (OpenVINO): LATENCY or THROUGHPUT (default from ``streams``)."""

    threads: Optional[int] = None
    streams: int = 1
    hint: Optional[str] = None

    def check(self) -> "RuntimeOptions":
        if self.threads is not None:
            check_positive("threads", self.threads)
        check_positive("streams", self.streams)
        if self.hint not in (None, "LATENCY", "THROUGHPUT"):
            raise ParameterError("hint", f"expected LATENCY or THROUGHPUT, got {self.hint!r}")
        return self


def check_graph(path: PathLike, meta: ClassifierMeta, in_shape: List[Any], out_shape: List[Any]) -> Optional[int]:
    """The graph must be the classifier its meta describes (another arch's file, or meta pasted from another
    model, is refused naming the file). Returns the static batch size, or None for a dynamic batch."""
    S, K = meta.input_size, meta.num_classes
    fixed = [d if isinstance(d, int) and d > 0 else None for d in in_shape]
    if len(fixed) != 4 or fixed[1] != 3 or fixed[2] != S or fixed[3] != S:
        raise CheckpointError(f"{path}: the graph takes input {list(in_shape)}, but its meta says "
                              f"{meta.arch} crops [N, 3, {S}, {S}]: exported from another model")
    if len(out_shape) != 2 or (isinstance(out_shape[1], int) and out_shape[1] > 0 and out_shape[1] != K):
        raise CheckpointError(f"{path}: the graph outputs {list(out_shape)}, but its meta lists {K} classes")
    return fixed[0]


def split_batch(n: int, parts: int, static_batch: Optional[int]) -> List[slice]:
    """Slices covering ``range(n)``: ``parts`` near-equal ones, or chunks of a static batch size."""
    if static_batch:
        return [slice(i, min(i + static_batch, n)) for i in range(0, n, static_batch)]
    bounds = np.linspace(0, n, min(parts, n) + 1).round().astype(int)
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class RuntimeClassifier:
    """Shared behaviour; subclasses implement ``_logits(np.ndarray [n, 3, S, S]) -> np.ndarray [n, K]``."""

    routes = None  # a single input size (a routed set wraps these: models.inference.RoutedClassifier)

    backend = "?"

    def __init__(self, path: PathLike, meta: ClassifierMeta, options: RuntimeOptions, static_batch: Optional[int]):
        self.path = Path(path)
        self.meta = meta
        self.options = options
        self.static_batch = static_batch
        self.precision = "fp32"
        self._pool = ThreadPoolExecutor(options.streams) if options.streams > 1 else None

    crop = property(lambda self: self.meta.crop)  # type: CropSpec
    class_names = property(lambda self: list(self.meta.class_names))
    input_size = property(lambda self: self.meta.input_size)
    device = property(lambda self: torch.device("cpu"))

    def eval(self) -> "RuntimeClassifier":
        return self

    def _logits(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _run(self, x: np.ndarray) -> np.ndarray:
        parts = split_batch(len(x), self.options.streams, self.static_batch)
        run: Callable[[slice], np.ndarray] = lambda s: self._padded(x[s])
        outs = list(self._pool.map(run, parts)) if self._pool and len(parts) > 1 else [run(s) for s in parts]
        return np.concatenate(outs)

    def _padded(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if self.static_batch and n < self.static_batch:  # a static-shape file runs full batches only
            x = np.concatenate([x, np.zeros((self.static_batch - n, *x.shape[1:]), x.dtype)])
        return self._logits(np.ascontiguousarray(x))[:n]

    def _check(self, x: Tensor) -> None:
        S = self.input_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, S, S):
            raise ValueError(f"expected crops [N, 3, {S}, {S}], got shape {tuple(x.shape)}")

    def logits(self, x: Tensor) -> Tensor:
        self._check(x)
        if x.shape[0] == 0:
            return torch.zeros(0, self.meta.num_classes)
        arr = x.detach().to("cpu", torch.float32).numpy()
        return torch.from_numpy(np.asarray(self._run(arr), dtype=np.float32))

    def __call__(self, x: Tensor) -> Tensor:
        return torch.softmax(self.logits(x), dim=1)

    forward = __call__

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.path}, {self.meta.arch}, {self.meta.num_classes} classes, "
                f"threads={self.options.threads}, streams={self.options.streams})")


def read_onnx_meta(path: PathLike) -> ClassifierMeta:
    """The meta ``tools/export.py`` embedded in an ONNX file (``CheckpointError`` naming it if missing)."""
    onnx = import_runtime("onnx")
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: no such exported model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends: a foreign or truncated file
        raise CheckpointError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from e
    props = {p.key: p.value for p in model.metadata_props}
    return parse_meta(props.get(META_KEY), path)


INT8_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}


def onnx_is_int8(path: PathLike) -> bool:
    """An int8 (quantized) ONNX file: its meta says so (``tools/quantize.py --format onnx|openvino``), or its
    graph holds quantization operators (a file quantized elsewhere)."""
    onnx = import_runtime("onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends: a foreign or truncated file
        raise CheckpointError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from e
    props = {p.key: p.value for p in model.metadata_props}
    if props.get(META_KEY) and parse_meta(props[META_KEY], path).extra.get("quantized"):
        return True
    return any(n.op_type in INT8_OPS for n in model.graph.node)


class OnnxRuntimeClassifier(RuntimeClassifier):
    """An exported ``.onnx`` on ONNX Runtime's CPU execution provider."""

    backend = "onnxruntime"

    def __init__(self, path: PathLike, options: Optional[RuntimeOptions] = None):
        ort = import_runtime("onnxruntime")
        options = (options or RuntimeOptions()).check()
        meta = read_onnx_meta(path)
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(options.threads or 0)  # 0: ONNX Runtime's default (physical cores)
        so.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), sess_options=so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph types
            raise CheckpointError(f"{path}: ONNX Runtime cannot load it ({type(e).__name__}: {e})") from e
        inp = self.session.get_inputs()[0]
        outs = {o.name: o for o in self.session.get_outputs()}
        if inp.name != INPUT_NAME or "logits" not in outs:
            raise CheckpointError(f"{path}: expected input {INPUT_NAME!r} and outputs {list(OUTPUT_NAMES)}, found "
                                  f"{inp.name!r} and {sorted(outs)}: not exported by tools/export.py")
        static = check_graph(path, meta, inp.shape, outs["logits"].shape)
        super().__init__(path, meta, options, static)
        self.precision = "int8" if meta.extra.get("quantized") else "fp32"

    def _logits(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {INPUT_NAME: x})[0]


_OV_CORE: Any = None
_OV_CORE_LOCK = threading.Lock()


def openvino_core(ov) -> Any:
    """The process's one ``ov.Core``. OpenVINO's CPU plugin installs its own alternate signal stack on the
    thread that compiles and restores the previous one when its Core goes; two Cores released in creation
    order (not LIFO) leave the thread's alternate stack pointing at freed memory, and the next signal handled
    on it (a Python handler, e.g. the SIGCHLD one torch's DataLoader installs, when any child process exits)
    segfaults the process. One Core for the whole process keeps that stack valid (and is what OpenVINO
    recommends anyway)."""
    global _OV_CORE
    with _OV_CORE_LOCK:
        if _OV_CORE is None:
            _OV_CORE = ov.Core()
        return _OV_CORE


OV_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16"}


class OpenVinoClassifier(RuntimeClassifier):
    """An exported ``.onnx`` on OpenVINO's CPU plugin at ``precision`` (``INFERENCE_PRECISION_HINT``: fp32 ->
    f32, always asked for explicitly, since on CPUs with bf16 OpenVINO would otherwise run bf16 silently;
    bf16 -> bf16, for CPUs with native bf16). An int8 (quantized) model runs its int8 layers either way."""

    backend = "openvino"

    def __init__(self, path: PathLike, options: Optional[RuntimeOptions] = None, precision: str = "fp32"):
        if precision not in OV_PRECISION_HINTS:
            raise ParameterError("precision", f"{precision}: OpenVINO runs {', '.join(OV_PRECISION_HINTS)} here")
        ov = import_runtime("openvino")
        options = (options or RuntimeOptions()).check()
        meta = read_onnx_meta(path)  # OpenVINO drops ONNX metadata_props: read them with onnx
        core = openvino_core(ov)
        try:
            model = core.read_model(str(path))
        except Exception as e:
            raise CheckpointError(f"{path}: OpenVINO cannot read it ({type(e).__name__}: {e})") from e
        names = [set(o.get_names()) for o in model.outputs]
        if not any("logits" in n for n in names):
            raise CheckpointError(f"{path}: no 'logits' output: not exported by tools/export.py")
        shape = lambda p: [d.get_length() if d.is_static else None for d in p]  # noqa: E731
        logits_port = next(o for o, n in zip(model.outputs, names) if "logits" in n)
        static = check_graph(path, meta, shape(model.inputs[0].get_partial_shape()),
                             shape(logits_port.get_partial_shape()))
        hint = options.hint or ("THROUGHPUT" if options.streams > 1 else "LATENCY")
        config = {"PERFORMANCE_HINT": hint, "NUM_STREAMS": str(options.streams),
                  "INFERENCE_PRECISION_HINT": OV_PRECISION_HINTS[precision]}
        if options.threads:
            config["INFERENCE_NUM_THREADS"] = str(options.threads * options.streams)
        self.compiled = core.compile_model(model, "CPU", config)
        self._output = self.compiled.output("logits")
        # One infer request per stream: a request is not safe to share between threads.
        self._requests = [self.compiled.create_infer_request() for _ in range(options.streams)]
        self._free = list(self._requests)
        super().__init__(path, meta, options, static)
        self.precision = "int8" if meta.extra.get("quantized") else precision

    def _logits(self, x: np.ndarray) -> np.ndarray:
        request = self._free.pop()  # list.pop/append are atomic under the GIL
        try:
            return request.infer({0: x})[self._output].copy()
        finally:
            self._free.append(request)


class TorchScriptClassifier(RuntimeClassifier):
    """An exported TorchScript archive (``tools/export.py --format torchscript``), on CPU or CUDA."""

    backend = "torchscript"

    def __init__(self, path: PathLike, device: Any = "cpu", options: Optional[RuntimeOptions] = None):
        options = (options or RuntimeOptions()).check()
        files = {TORCHSCRIPT_META_FILE: ""}
        if not Path(path).is_file():
            raise CheckpointError(f"{path}: no such exported model file")
        try:
            self.module = torch.jit.load(str(path), map_location=device, _extra_files=files).eval()
        except Exception as e:  # RuntimeError on a foreign zip or truncated file
            raise CheckpointError(f"{path}: not a readable TorchScript file ({type(e).__name__}: {e})") from e
        raw = files[TORCHSCRIPT_META_FILE]
        meta = parse_meta(raw.decode() if isinstance(raw, bytes) else raw, path)
        self._device = torch.device(device)
        super().__init__(path, meta, options, None)
        with torch.inference_mode():  # the graph itself says its input size: refuse a mismatching meta
            try:
                out = self.module(torch.zeros(1, 3, meta.input_size, meta.input_size, device=self._device))[0]
            except RuntimeError as e:
                raise CheckpointError(f"{path}: the graph does not take the {meta.arch} crops [N, 3, "
                                      f"{meta.input_size}, {meta.input_size}] its meta names ({e})") from e
        check_graph(path, meta, [None, 3, meta.input_size, meta.input_size], list(out.shape))

    device = property(lambda self: self._device)

    def logits(self, x: Tensor) -> Tensor:
        self._check(x)
        if x.shape[0] == 0:
            return torch.zeros(0, self.meta.num_classes, device=self._device)
        with torch.inference_mode():
            return self.module(x.to(self._device, torch.float32))[0].float()

    def __call__(self, x: Tensor) -> Tensor:
        return torch.softmax(self.logits(x), dim=1)

    forward = __call__
