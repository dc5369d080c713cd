"""int8 as an ONNX file: the checkpoint's exported graph quantized for the CPU runtimes.

Two quantizers, both static post-training quantization calibrated on the same crops ``tools/quantize.py``
gathers for FX int8 (``quantize.calibration_batches``), both writing a QDQ ``.onnx`` (QuantizeLinear /
DequantizeLinear around each quantized op: per-channel int8 weights, uint8 activations) with the
checkpoint's meta inside (``export.META_KEY``, ``"quantized"`` set):

* ``onnx``: ONNX Runtime's ``quantize_static`` (QDQ, per-channel, MinMax calibration, 7-bit weights); ONNX
  Runtime runs it with its int8 (VNNI/AMX where present) kernels, OpenVINO reads the QDQ pairs as its own int8.
  Without VNNI, x86 int8 kernels sum pairs of uint8 x int8 products in int16 (``vpmaddubsw``), which
  saturates with full-range weights: ``reduce_range`` keeps the sums in range on every x86 CPU (measured on
  an AVX2-only CPU, docs/deploy.md: 63.1 % top-1 with 8-bit weights, 68.6 % with 7-bit, fp32 67.6 %).
* ``openvino``: NNCF's post-training quantization of the same ONNX graph (its default preset: symmetric
  weights, bias correction, NNCF's range estimators), meant for OpenVINO (``--backend openvino``).

``load_classifier`` recognises the file as int8 (``runtimes.onnx_is_int8``) and reports precision int8.
"""
from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
from torch import Tensor

from ..errors import BackendUnavailableError, UsageError
from ..models.inference import build_inference_classifier
from ..models.weights import classifier_from_checkpoint, load_checkpoint
from ..structures import ClassifierMeta
from ..utils.io import atomic_write_bytes
from .accuracy import held_out_top1
from .export import (EXPORT_VERSION, FORMAT_VERSION_KEY, INPUT_NAME, META_KEY, ExportOptions, export_form, is_routed,
                     meta_json, onnx_bytes)
from .quantize import calibration_batches
from .runtimes import OnnxRuntimeClassifier, OpenVinoClassifier

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
ONNX_FORMATS = ("onnx", "openvino")
QUANTIZED_TAG = {"onnx": "onnx-qdq-int8", "openvino": "nncf-qdq-int8"}


def _need(module: str, extra: str):
    try:
        return __import__(module)
    except ImportError as e:
        raise BackendUnavailableError(f"int8 --format needs {module} ({e}); install it with: "
                                      f"pip install crop_classifier[{extra}]") from e


def _arrays(batches: Iterator[Tensor]) -> List[np.ndarray]:
    out = [np.ascontiguousarray(x.float().numpy()) for x in batches]
    if not out:
        raise UsageError("calibration saw no crops")
    return out


def _ort_qdq(fp32: Path, out: Path, crops: List[np.ndarray]) -> None:
    _need("onnxruntime", "onnx")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(crops)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: x}

    prepped = out.with_name(out.stem + ".pre.onnx")
    quant_pre_process(str(fp32), str(prepped), skip_symbolic_shape=True)
    quantize_static(str(prepped), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "MatMul", "Gemm", "Add", "Mul", "MaxPool", "AveragePool",
                                          "GlobalAveragePool", "Concat", "Relu"],
                    reduce_range=True, extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})


def _nncf_qdq(fp32: Path, out: Path, crops: List[np.ndarray]) -> None:
    nncf = _need("nncf", "openvino")
    onnx = _need("onnx", "onnx")
    model = onnx.load(str(fp32))
    singles = [x[i:i + 1] for x in crops for i in range(len(x))]  # NNCF's statistics are per sample
    quantized = nncf.quantize(model, nncf.Dataset(singles, lambda x: {INPUT_NAME: x}), subset_size=len(singles))
    onnx.save(quantized, str(out))


def quantize_onnx_bytes(fp32_onnx: bytes, meta: ClassifierMeta, batches: Iterator[Tensor], fmt: str,
                        info: Dict[str, Any]) -> bytes:
    """The int8 QDQ ``.onnx`` bytes of an exported fp32 graph.

    Args:
        fp32_onnx: the fp32 file's bytes (``export.onnx_bytes``: input ``crops`` [N, 3, S, S] in [0, 1]).
        meta: its meta; written back with ``"quantized"`` and ``"quantization"`` (``info`` and the method).
        batches: calibration crops, each [B, 3, S, S] in [0, 1].
        fmt: ``onnx`` (ONNX Runtime's quantizer) or ``openvino`` (NNCF).
        info: what to record of the calibration (datasets, crops).

    Returns:
        The quantized model's bytes, meta inside.
    """
    if fmt not in ONNX_FORMATS:
        raise UsageError(f"--format {fmt!r}: valid choices are fx, {', '.join(ONNX_FORMATS)}")
    onnx = _need("onnx", "onnx")
    crops = _arrays(batches)
    with tempfile.TemporaryDirectory() as tmp:
        fp32, out = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        fp32.write_bytes(fp32_onnx)
        (_ort_qdq if fmt == "onnx" else _nncf_qdq)(fp32, out, crops)
        model = onnx.load(str(out))
    out_meta = meta.to_dict()
    method = ("onnxruntime.quantization.quantize_static QDQ, per-channel, MinMax, 7-bit weights" if fmt == "onnx"
              else "NNCF post-training quantization (ONNX QDQ)")
    # reduce_range: the file's int8 sums cannot saturate on a CPU without VNNI (module doc)
    out_meta.update(quantized=QUANTIZED_TAG[fmt],
                    quantization={"method": method, "reduce_range": fmt == "onnx", **info})
    props = {p.key: p.value for p in model.metadata_props}
    props[META_KEY] = meta_json(ClassifierMeta.from_dict(out_meta))
    props.setdefault(FORMAT_VERSION_KEY, EXPORT_VERSION)
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    return model.SerializeToString()


def saturation_risk(meta: ClassifierMeta, features: Dict[str, bool]) -> Optional[str]:
    """Why an int8 ``.onnx`` may lose accuracy on a CPU with ``features`` (``models.inference.cpu_features``),
    or None: an ONNX Runtime QDQ file with full-range (8-bit) weights on a CPU without VNNI (module doc)."""
    q = meta.extra.get("quantization") or {}
    if meta.extra.get("quantized") != QUANTIZED_TAG["onnx"] or q.get("reduce_range") or features.get("VNNI"):
        return None
    return ("its 8-bit weights can saturate this CPU's int8 sums (no VNNI: measured 63.1 % top-1 against 68.6 % "
            "with 7-bit weights); re-quantize it with tools/quantize.py --format onnx, which writes 7-bit weights")


def write_int8_onnx(output: PathLike, data: bytes) -> Path:
    """Writes the int8 file atomically."""
    return atomic_write_bytes(output, data)


def with_meta(data: bytes, meta: Dict[str, Any]) -> bytes:
    """An exported ``.onnx`` (its bytes) with the classifier meta inside replaced by ``meta`` (a meta dict).

    Returns:
        The new file's bytes.
    """
    onnx = _need("onnx", "onnx")
    model = onnx.load_from_string(data)
    for p in model.metadata_props:
        if p.key == META_KEY:
            p.value = meta_json(ClassifierMeta.from_dict(meta))
    return model.SerializeToString()


def _runtime_for(fmt: str, path: Path):
    """The runtime an int8 file of ``fmt`` is meant for (both read either file)."""
    return OpenVinoClassifier(path) if fmt == "openvino" else OnnxRuntimeClassifier(path)


def quantize_checkpoint_onnx(weights: PathLike, output: PathLike, calib: Any, fmt: str,
                             eval_datasets: Optional[Sequence[str]] = None, eval_min_size: float = 0.0) -> Path:
    """A single-stem fp32 checkpoint as an int8 ``.onnx`` (``fmt``: ``onnx`` | ``openvino``), written atomically.

    Args:
        weights: the fp32 checkpoint.
        output: the ``.onnx`` to write.
        calib: ``quantize.CalibrationOptions`` (the training crops ``tools/quantize.py`` names).
        fmt: which quantizer (module doc).
        eval_datasets: held-out datasets; fp32 (torch) and int8 (the runtime ``fmt`` is for) top-1 on their
            crops are logged and recorded in the meta (``quantization.eval``).
        eval_min_size: boxes under this many px are left out of the evaluation.

    Returns:
        The path written.
    """
    raw = load_checkpoint(weights)["meta"]
    if raw.get("quantized"):
        raise UsageError(f"--weights {weights}: already an int8 checkpoint")
    if is_routed(raw):
        raise UsageError(f"--weights {weights}: a routed (auto) checkpoint is quantized per route with --format fx")
    model, meta_dict = classifier_from_checkpoint(weights)
    meta = ClassifierMeta.from_dict(meta_dict)
    fp32 = onnx_bytes(export_form(model, meta), meta, ExportOptions())
    info = {"calib_datasets": list(calib.datasets), "calib_crops": int(calib.num_crops)}
    data = quantize_onnx_bytes(fp32, meta, calibration_batches(meta, calib), fmt, info)
    path = write_int8_onnx(output, data)
    if eval_datasets:
        forms = {"fp32": build_inference_classifier(model, meta, device="cpu"), "int8": _runtime_for(fmt, path)}
        result = held_out_top1(forms, meta, eval_datasets, min_size=eval_min_size)
        logger.info("%s held-out top-1 on %d crops: fp32 %.4f, int8 %.4f (agreement %.4f)", meta.arch,
                    result["crops"], result["top1"]["fp32"], result["top1"]["int8"], result["agreement"]["int8"])
        full = forms["int8"].meta.to_dict()
        full["quantization"] = {**full.get("quantization", {}), "eval": result}
        path = write_int8_onnx(output, with_meta(data, full))
    return path
