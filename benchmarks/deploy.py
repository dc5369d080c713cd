"""The deploy table: crops/s of every way to run the classifier on CPU, side by side, in one run.

Rows: the network run eagerly (``model.eval()``, ``no_grad``, NCHW, normalisation outside: how torchvision
models are usually run), the project's default form (``InferenceClassifier``), the same with N parallel
single-thread streams (``StreamedClassifier``), FX int8 (x86), ONNX Runtime and OpenVINO each with
1 stream x N threads and N streams x 1 thread; where the CPU has native bf16, torch bf16 autocast and
OpenVINO's bf16 hint; the int8 ``.onnx`` forms (ONNX Runtime QDQ on ONNX Runtime and OpenVINO, NNCF on
OpenVINO). All rows are timed interleaved over the same rounds on the same batch; crops/s from the median,
the ratio against the default form from the per-round paired ratio. The header gives the CPU's features
(/proc/cpuinfo) and its own dense GEMM rate per precision, measured in the same run (torch matmul fp32/bf16;
int8: ``torch._int_mm`` or ONNX Runtime's ``MatMulInteger``), and each row its % of the rate at its precision.
Agreement with the fp32 torch form on that batch: max |Δ prob| and top-1 agreement (the weights are random
with spread-out BN statistics and head, so agreement says how exact a runtime is, not accuracy; int8
accuracy on a trained classifier is in docs/benchmarks.md).
"""
from __future__ import annotations

import importlib.util
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

import torch

from crop_classifier.models import build_classifier
from crop_classifier.models.inference import build_inference_classifier
from crop_classifier.models.weights import model_meta
from crop_classifier.structures import ClassifierMeta

from .env import _cpu_model as cpu_model
from .models import count_gmacs
from .timing import int8_matmul_gops, matmul_gflops, paired_ratio, time_interleaved
from crop_classifier.deploy.int8_onnx import quantize_onnx_bytes
from crop_classifier.deploy.quantize import quantize_model
from crop_classifier.models.inference import InferenceClassifier, cpu_features, cpu_has_native_bf16
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


def _int8_onnx_rows(model, meta: ClassifierMeta, onnx_path: Path, threads: int, calib_batches: int, batch: int):
    """The int8 ``.onnx`` forms (``deploy.int8_onnx``): ONNX Runtime's QDQ file on ONNX Runtime and on OpenVINO,
    NNCF's on OpenVINO; random calibration (speed only). Quantizers not installed are left out."""
    g = torch.Generator().manual_seed(1)
    S = meta.input_size
    calib = [torch.rand(batch, 3, S, S, generator=g) for _ in range(calib_batches)]
    options = RuntimeOptions(threads=threads, streams=1)
    rows, fp32 = {}, onnx_path.read_bytes()
    have = lambda m: importlib.util.find_spec(m) is not None  # noqa: E731
    if have("onnxruntime"):
        qdq = onnx_path.with_name("int8_qdq.onnx")
        qdq.write_bytes(quantize_onnx_bytes(fp32, meta, iter(calib), "onnx", {}))
        rows["int8 ONNX QDQ on onnxruntime"] = (OnnxRuntimeClassifier(qdq, options),
                                                "onnxruntime quantize_static QDQ per-channel, 1 x N threads", "int8")
        if have("openvino"):
            rows["int8 ONNX QDQ on openvino"] = (OpenVinoClassifier(qdq, options),
                                                 "the same QDQ file on OpenVINO (its int8 kernels), 1 x N threads",
                                                 "int8")
    if have("nncf") and have("openvino"):
        nq = onnx_path.with_name("int8_nncf.onnx")
        nq.write_bytes(quantize_onnx_bytes(fp32, meta, iter(calib), "openvino", {}))
        rows["int8 NNCF on openvino"] = (OpenVinoClassifier(nq, options), "NNCF PTQ of the ONNX graph, 1 x N threads",
                                         "int8")
    return rows


def build_rows(model, meta: ClassifierMeta, onnx_path: Optional[Path], threads: int, opts: dict) -> Dict[str, tuple]:
    """name -> (classifier-like callable, note, precision). Runtimes that are not installed are left out; bf16
    rows only where the CPU has native bf16 (``opts["bf16"]``), where they are the float forms to beat."""
    default = build_inference_classifier(model, meta, device="cpu")
    rows = {
        "torch eager": (_eager(model, meta), "model.eval(), no_grad, NCHW, unfolded BN", "fp32"),
        DEFAULT: (default, "BN folded, channels_last, inference_mode", "fp32"),
        f"torch {threads}x1 streams": (StreamedClassifier(default, threads, 1),
                                       f"{threads} parallel streams x 1 thread, batch split", "fp32"),
    }
    if opts.get("bf16"):
        rows["torch bf16 autocast"] = (build_inference_classifier(model, meta, device="cpu", precision="bf16"),
                                       "the inference form under bf16 autocast (--backend torch --precision bf16)",
                                       "bf16")
    if opts.get("int8", True):
        rows["int8 (FX x86)"] = (_int8(model, meta, opts.get("calib_batches", 2), opts["batch"]),
                                 "torch.ao FX static PTQ, random calibration (speed only)", "int8")
    layouts = {f"1x{threads}": RuntimeOptions(threads=threads, streams=1),
               f"{threads}x1": RuntimeOptions(threads=1, streams=threads)}
    for name, cls in (("onnxruntime", OnnxRuntimeClassifier), ("openvino", OpenVinoClassifier)):
        if onnx_path is None or importlib.util.find_spec(name) is None:
            continue
        for layout, options in layouts.items():
            rows[f"{name} {layout}"] = (cls(onnx_path, options), f"{options.streams} stream(s) x "
                                                                 f"{options.threads} thread(s), fp32", "fp32")
        if name == "openvino" and opts.get("bf16"):
            rows[f"openvino bf16 1x{threads}"] = (OpenVinoClassifier(onnx_path, layouts[f"1x{threads}"], "bf16"),
                                                  "INFERENCE_PRECISION_HINT bf16 (the auto default here)", "bf16")
    if opts.get("int8", True) and onnx_path is not None:
        rows.update(_int8_onnx_rows(model, meta, onnx_path, threads, opts.get("calib_batches", 2), opts["batch"]))
    return rows


def _agreement(fn, x: torch.Tensor, ref: torch.Tensor) -> Dict[str, float]:
    probs = fn(x).float()
    return {"max_abs_dprob": float((probs - ref).abs().max()),
            "top1_agreement": float((probs.argmax(1) == ref.argmax(1)).float().mean())}


def gemm_reference(n: int, bf16: bool) -> Dict[str, Dict[str, object]]:
    """The machine's dense GEMM rate per precision, measured now (GFLOP/s; int8: GOP/s): the physical limit
    each row is compared to. bf16 only where the CPU has it natively (emulated bf16 is no reference)."""
    out: Dict[str, Dict[str, object]] = {"fp32": matmul_gflops(n, dtype=torch.float32)}
    if bf16:
        out["bf16"] = matmul_gflops(n, dtype=torch.bfloat16)
    q = int8_matmul_gops(n)
    out["int8"] = {**q, "gflops": q.get("gops")}
    return out


def _gmacs(model, input_size: int) -> Optional[float]:
    try:
        return count_gmacs(model, input_size)
    except ImportError:  # fvcore: not in a core install; the table then has no % of the GEMM rate
        return None


def _timed_forms(model, meta: ClassifierMeta, x: torch.Tensor, opts: dict, rounds: int, warmup: int, log):
    """Every form of ``model`` built, timed interleaved on ``x`` and compared with the default form.

    Returns:
        ``{name: (note, precision)}``, ``{name: Timing}``, ``{name: agreement dict}``.
    """
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = None
        if importlib.util.find_spec("onnx") is not None:
            onnx_path = export_model(model, meta, Path(tmp) / "model.onnx")
        rows = build_rows(model, meta, onnx_path, threads, opts)
        ref = rows[DEFAULT][0](x)
        log(f"[deploy] {meta.arch} x{meta.width:g}, batch {len(x)}, {threads} threads: {', '.join(rows)}")
        timings = time_interleaved({k: (lambda f=f: f(x)) for k, (f, _, _) in rows.items()}, rounds=rounds,
                                   warmup=warmup)
        agreement = {k: _agreement(f, x, ref) for k, (f, _, _) in rows.items()}
    return {k: (note, precision) for k, (_, note, precision) in rows.items()}, timings, agreement


def _table_row(name: str, note: str, precision: str, timings, agreement, batch: int, gmacs, gemm) -> dict:
    t = timings[name]
    row = {"name": name, "note": note, "precision": precision, "median_s": t.median,
           "crops_per_s": batch / t.median, "ratio_vs_default": paired_ratio(timings[DEFAULT], t),
           **agreement[name]}
    peak = (gemm.get(precision) or {}).get("gflops")
    if gmacs is not None:
        row["effective_gflops"] = 2.0 * gmacs * batch / t.median
        row["pct_of_gemm"] = 100.0 * row["effective_gflops"] / peak if peak else None
    return row


def run_deploy(*, device: str = "cpu", arch: str = "v3_79", width: float = 1.0, num_classes: int = 80,
               batch: int = 32, rounds: int = 7, warmup: int = 1, calib_batches: int = 2,
               gemm_n: int = 2048, log=print) -> Dict[str, object]:
    """The deploy table (module doc): every form timed interleaved on one batch, with the CPU's features and
    its own GEMM rates.

    Args:
        calib_batches: calibration batches of the int8 forms; 0 leaves the int8 rows out.
    Returns:
        The JSON the report renders (``deploy_md``).
    """
    if torch.device(device).type != "cpu":
        return {"skipped": "the deploy table is a CPU comparison (ONNX Runtime/OpenVINO CPU, int8 x86)"}
    bf16 = cpu_has_native_bf16()
    model = spread_weights(build_classifier(arch, num_classes, width=width, aux_logits=False))
    meta = ClassifierMeta.from_dict(model_meta(model, arch, [f"c{i}" for i in range(num_classes)]))
    x = torch.rand(batch, 3, meta.input_size, meta.input_size, generator=torch.Generator().manual_seed(0))
    opts = {"int8": calib_batches > 0, "calib_batches": calib_batches, "batch": batch, "bf16": bf16}
    forms, timings, agreement = _timed_forms(model, meta, x, opts, rounds, warmup, log)
    gemm = gemm_reference(gemm_n, bf16)
    gmacs = _gmacs(model, meta.input_size)
    out = [_table_row(name, note, precision, timings, agreement, batch, gmacs, gemm)
           for name, (note, precision) in forms.items()]
    return {"arch": arch, "width": width, "num_classes": num_classes, "batch": batch, "rounds": rounds,
            "threads": torch.get_num_threads(), "default": DEFAULT, "cpu": cpu_model(),
            "cpu_features": cpu_features(), "gmacs_per_crop": gmacs, "gemm": gemm, "rows": out}


def deploy_md(d: Dict) -> str:
    """The deploy section of benchmark.md: header (CPU, its features, the GEMM references) and the table."""
    if d.get("skipped"):
        return f"Skipped: {d['skipped']}."
    feats = d.get("cpu_features") or {}
    gemm = d.get("gemm") or {}
    ref = ", ".join(f"{k} {v['gflops']:.0f} G{'OP' if k == 'int8' else 'FLOP'}/s" + (f" ({v['how']})" if v.get("how")
                                                                                       else "")
                    for k, v in gemm.items() if v.get("gflops"))
    rows = [[r["name"], r.get("precision", "fp32"), r["crops_per_s"], 1e3 * r["median_s"],
             f"{r['ratio_vs_default']:.2f}x",
             "-" if r.get("pct_of_gemm") is None else f"{r['pct_of_gemm']:.0f} %",
             f"{r['max_abs_dprob']:.1e}", f"{100 * r['top1_agreement']:.1f}", r["note"]] for r in d["rows"]]
    cost = f", {2 * d['gmacs_per_crop']:.2f} GFLOP a crop" if d.get("gmacs_per_crop") else ""
    return (f"CPU: {d.get('cpu', '?')}; features: "
            + ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in feats.items())
            + f". Dense {gemm.get('fp32', {}).get('n', '?')}-cube GEMM on {d['threads']} threads, this run: {ref}.\n\n"
            f"{d['arch']} at width {d['width']:g}, {d['num_classes']} classes{cost}, batch {d['batch']}, "
            f"{d['threads']} threads, {d['rounds']} interleaved rounds; ratio = speed vs `{d['default']}`; "
            "% GEMM = effective FLOP/s over this CPU's dense GEMM rate at the row's precision; agreement vs the "
            "fp32 torch form (random weights).\n\n"
            + _table(["runtime", "precision", "crops/s", "ms/batch", "ratio", "% GEMM", "max |Δ prob|",
                      "top-1 agree %", "how"], rows))


def _table(header: List[str], rows: List[List[object]]) -> str:
    fmt = lambda v: f"{v:.1f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows])
