"""The deploy table: crops/s of every way to run the classifier on CPU, side by side, in one run.

Rows: the network run eagerly (``model.eval()``, ``no_grad``, NCHW, normalisation outside: how torchvision
models are usually run), the project's default form (``InferenceClassifier``), the same with N parallel
single-thread streams (``StreamedClassifier``), FX int8 (x86), ONNX Runtime and OpenVINO each with
1 stream x N threads and N streams x 1 thread. All rows are timed interleaved over the same rounds on the
same batch; crops/s from the median, the ratio against the default form from the per-round paired ratio.
Agreement with the fp32 torch form on that batch: max |Δ prob| and top-1 agreement (the weights are random
with spread-out BN statistics and head, so agreement says how exact a runtime is, not accuracy; int8
accuracy on a trained classifier is in docs/benchmarks.md).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from crop_classifier.models import build_classifier
from crop_classifier.models.inference import build_inference_classifier
from crop_classifier.models.weights import model_meta
from crop_classifier.structures import ClassifierMeta

from .timing import paired_ratio, time_interleaved
from crop_classifier.deploy.quantize import quantize_model
from crop_classifier.models.inference import InferenceClassifier
from crop_classifier.deploy.runtimes import OnnxRuntimeClassifier, OpenVinoClassifier, RuntimeOptions
from crop_classifier.deploy.streams import StreamedClassifier
from crop_classifier.deploy.export import export_model

DEFAULT = "torch default (InferenceClassifier)"


def spread_weights(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random BN statistics/affine and a larger head, so logits differ by whole units (agreement figures
    on near-zero logits would be meaningless)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    model.fc.weight.data.copy_(torch.randn(model.fc.weight.shape, generator=g) * 2.0)
    return model.eval()


def _eager(model: torch.nn.Module, meta: ClassifierMeta) -> Callable:
    mean = torch.tensor(meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.std).view(1, 3, 1, 1)

    def run(x):
        with torch.no_grad():
            return torch.softmax(model((x - mean) / std), dim=1)
    return run


def _int8(model, meta: ClassifierMeta, calib_batches: int, batch: int):
    g = torch.Generator().manual_seed(1)
    S = meta.input_size
    calib = (torch.rand(batch, 3, S, S, generator=g) for _ in range(calib_batches))  # crops in [0, 1]
    return InferenceClassifier(quantize_model(model, meta, calib), meta, channels_last=False)


def build_rows(model, meta: ClassifierMeta, onnx_path: Optional[Path], threads: int, opts: dict) -> Dict[str, tuple]:
    """name -> (classifier-like callable, note). Runtimes that are not installed are left out (noted)."""
    default = build_inference_classifier(model, meta, device="cpu")
    rows = {
        "torch eager": (_eager(model, meta), "model.eval(), no_grad, NCHW, unfolded BN"),
        DEFAULT: (default, "BN folded, channels_last, inference_mode"),
        f"torch {threads}x1 streams": (StreamedClassifier(default, threads, 1),
                                       f"{threads} parallel streams x 1 thread, batch split"),
    }
    if opts.get("int8", True):
        rows["int8 (FX x86)"] = (_int8(model, meta, opts.get("calib_batches", 2), opts["batch"]),
                                 "torch.ao FX static PTQ, random calibration (speed only)")
    layouts = {f"1x{threads}": RuntimeOptions(threads=threads, streams=1),
               f"{threads}x1": RuntimeOptions(threads=1, streams=threads)}
    for name, cls in (("onnxruntime", OnnxRuntimeClassifier), ("openvino", OpenVinoClassifier)):
        if onnx_path is None or __import__("importlib").util.find_spec(name) is None:
            continue
        for layout, options in layouts.items():
            rows[f"{name} {layout}"] = (cls(onnx_path, options), f"{options.streams} stream(s) x "
                                                                 f"{options.threads} thread(s), fp32")
    return rows


def _agreement(fn, x: torch.Tensor, ref: torch.Tensor) -> Dict[str, float]:
    probs = fn(x).float()
    return {"max_abs_dprob": float((probs - ref).abs().max()),
            "top1_agreement": float((probs.argmax(1) == ref.argmax(1)).float().mean())}


def run_deploy(*, device: str = "cpu", arch: str = "v3_79", width: float = 1.0, num_classes: int = 80,
               batch: int = 32, rounds: int = 7, warmup: int = 1, int8: bool = True, calib_batches: int = 2,
               log=print) -> Dict[str, object]:
    if torch.device(device).type != "cpu":
        return {"skipped": "the deploy table is a CPU comparison (ONNX Runtime/OpenVINO CPU, int8 x86)"}

    threads = torch.get_num_threads()
    model = spread_weights(build_classifier(arch, num_classes, width=width, aux_logits=False))
    meta = ClassifierMeta.from_dict(model_meta(model, arch, [f"c{i}" for i in range(num_classes)]))
    x = torch.rand(batch, 3, meta.input_size, meta.input_size, generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = None
        if __import__("importlib").util.find_spec("onnx") is not None:
            onnx_path = export_model(model, meta, Path(tmp) / "model.onnx")
        rows = build_rows(model, meta, onnx_path, threads,
                          {"int8": int8, "calib_batches": calib_batches, "batch": batch})
        ref = rows[DEFAULT][0](x)
        log(f"[deploy] {arch} x{width:g}, batch {batch}, {threads} threads: {', '.join(rows)}")
        timings = time_interleaved({k: (lambda f=f: f(x)) for k, (f, _) in rows.items()}, rounds=rounds,
                                   warmup=warmup)
        agreement = {k: _agreement(f, x, ref) for k, (f, _) in rows.items()}
    out: List[Dict[str, object]] = []
    for name, (_, note) in rows.items():
        t = timings[name]
        out.append({"name": name, "note": note, "median_s": t.median, "crops_per_s": batch / t.median,
                    "ratio_vs_default": paired_ratio(timings[DEFAULT], t), **agreement[name]})
    return {"arch": arch, "width": width, "num_classes": num_classes, "batch": batch, "rounds": rounds,
            "threads": threads, "default": DEFAULT, "rows": out}
