"""Classifier speed: parameters, GMACs (fvcore), crops/s and latency per batch, peak memory, and the
achieved GFLOP/s as a fraction of a dense matmul measured in the same rounds.

All entries of one batch size are timed interleaved together with the dense GEMMs, so the ratios the
targets talk about (v3_299 vs torchvision, classifier vs matmul) come from the same seconds of machine time.

Two dense GEMMs are timed: ``torch.mm`` (MKL on CPU, cuBLAS on GPU) and, on CPU, the same product through
oneDNN (``torch.utils.mkldnn`` linear), the library that runs the convolutions. They can differ by 2x:
MKL does not use its AVX-512 kernels on AMD CPUs, oneDNN does. Efficiency is taken against the faster
of the two, so it is never flattered by a slow reference.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from crop_classifier.models import build_classifier
from crop_classifier.models.inference import build_inference_classifier

from .timing import PeakRSS, Timing, paired_ratio, time_fn, time_interleaved

REFERENCE = "tv_inception_v3"
MODEL_NAMES = ("v3_79", "v3_151", "v3_299", REFERENCE)


def build_model(name: str, width: float = 1.0, num_classes: int = 1000) -> nn.Module:
    """One of ours (no aux head: it is not run at inference), or torchvision's ``inception_v3`` (the
    reference implementation, random weights, full width only)."""
    if name == REFERENCE:
        import torchvision

        if width != 1.0:
            raise ValueError(f"{REFERENCE} exists at width 1.0 only, got width={width}")
        model = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False,
                                                num_classes=num_classes)
        model.input_size = 299
        return model.eval()
    return build_classifier(name, num_classes, width=width, aux_logits=False).eval()


def count_gmacs(model: nn.Module, input_size: int, device="cpu") -> float:
    """fvcore's count (one fused multiply-add = one "flop" in fvcore's convention) for one image."""
    from fvcore.nn import FlopCountAnalysis

    x = torch.zeros(1, 3, input_size, input_size, device=device)
    with torch.no_grad():
        fca = FlopCountAnalysis(model.eval(), x).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return fca.total() / 1e9


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@dataclass
class Mode:
    """How a model is run: ``prepare`` makes the inference copy, ``context`` wraps each call."""

    name: str
    prepare: Callable[[nn.Module], nn.Module]
    context: Callable[[], contextlib.AbstractContextManager]
    channels_last: bool
    note: str


def _eager(model: nn.Module) -> nn.Module:
    return model.eval()


def _inference_form(precision: str) -> Callable[[nn.Module], nn.Module]:
    """The project's inference form (``build_inference_classifier``: normalisation, BN folded, channels_last,
    inference_mode, softmax) of a benchmark model, at ``precision``."""
    def prepare(model: nn.Module) -> nn.Module:
        n = int(getattr(model, "num_classes", None) or model.fc.out_features)
        meta = {"arch": type(model).__name__, "class_names": [str(i) for i in range(n)],
                "input_size": int(model.input_size)}
        device = next(model.parameters()).device
        return build_inference_classifier(model, meta, device=device, precision=precision)
    return prepare


def modes_for(device: str, *, compile: bool = False) -> List[Mode]:
    """CPU: plain eager (how a user runs torchvision) and our inference form. CUDA adds bf16/fp16 autocast."""
    opt = _inference_form("fp32")
    modes = [
        Mode("eager", _eager, torch.no_grad, False, "model.eval(), torch.no_grad(), NCHW fp32"),
        Mode("optimized", opt, contextlib.nullcontext, True,
             "the inference form: normalise, BN folded into conv, channels_last, inference_mode, softmax; fp32"),
    ]
    if torch.device(device).type == "cuda":
        modes += [
            Mode("bf16", _inference_form("bf16"), contextlib.nullcontext, True, "inference form, bf16 autocast"),
            Mode("fp16", _inference_form("fp16"), contextlib.nullcontext, True, "inference form, fp16 autocast"),
        ]
    if compile:
        modes.append(Mode("compiled", lambda m: torch.compile(opt(m)), contextlib.nullcontext, True,
                          "inference form + torch.compile (inductor)"))
    return modes


def _trim_heap() -> None:
    """Give freed heap pages back to the OS so an RSS peak is measured from a clean baseline (glibc only)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_memory_mb(fn: Callable[[], object], device: str) -> float:
    """Extra memory one call needs: CUDA allocator high-water mark, or sampled RSS on CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    _trim_heap()
    with PeakRSS() as peak:
        fn()
    return peak.delta_mb


def run_models(
    *,
    device: str = "cpu",
    names=MODEL_NAMES,
    width: float = 1.0,
    batches=(1, 8, 32, 128),
    eager_batches=(8, 32),
    eager_models=("v3_299", REFERENCE),
    rounds: Optional[Dict[int, int]] = None,
    min_round_s: float = 0.5,
    matmul_n: int = 2048,
    compile: bool = False,
    profile: Sequence[Tuple[str, str, int]] = (),
    log: Callable[[str], None] = print,
) -> Dict[str, object]:
    """Measure every (model, mode) at every batch. Per batch, all entries and the dense GEMMs are timed in
    ``rounds[batch]`` interleaved rounds (default 3); within a round an entry is called often enough to
    take ``min_round_s`` (small batches). Plain eager runs only for ``eager_models`` at ``eager_batches``
    (the like-for-like comparison with torchvision); every other figure is the optimized inference form.
    ``profile``: (model, mode, batch) entries run once more under torch.profiler."""
    rounds = rounds or {}
    if width != 1.0:
        names = [n for n in names if n != REFERENCE]  # torchvision has no width knob
    base = {n: build_model(n, width) for n in names}
    info = {}
    for n, m in base.items():
        info[n] = {"input_size": m.input_size, "params": count_params(m), "gmacs": count_gmacs(m, m.input_size)}
        if n != REFERENCE:
            info[n]["params_with_aux"] = count_params(build_classifier(n, 1000, width=width, aux_logits=True))

    modes = modes_for(device, compile=compile)
    prepared = {}
    for mode in modes:
        for n, m in base.items():
            if mode.name != "eager" or n in eager_models:
                prepared[(n, mode.name)] = (mode, mode.prepare(m).to(device))

    gemms = dense_gemms(matmul_n, device)
    matmul_flop = 2.0 * matmul_n**3

    rows: List[Dict[str, object]] = []
    ratios: List[Dict[str, object]] = []
    matmul_runs: List[Dict[str, object]] = []
    profiles: List[Dict[str, object]] = []
    skipped: List[Dict[str, object]] = []
    for bs in batches:
        fns, peaks, repeats = {}, {}, {}
        for (n, mode_name), (mode, model) in prepared.items():
            if mode_name == "eager" and bs not in eager_batches:
                continue
            s = info[n]["input_size"]
            x = torch.randn(bs, 3, s, s, device=device)
            if mode.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)

            def call(model=model, x=x, ctx=mode.context):
                with ctx():
                    return model(x)

            key = (n, mode_name)
            # The warm-up call (oneDNN/cuDNN primitive creation, compilation) doubles as the memory probe;
            # its time (an over-estimate) sizes the repeats so each round spends ~min_round_s per entry.
            t0 = time.perf_counter()
            try:
                peaks[key] = _peak_memory_mb(call, device)
            except Exception as e:  # e.g. torch.compile without a working compiler: skip that entry only
                if mode_name == "eager" or mode_name == "optimized":
                    raise
                log(f"  models: {n} {mode_name} failed at batch {bs}: {type(e).__name__}: {e}")
                skipped.append({"model": n, "mode": mode_name, "batch": bs, "error": f"{type(e).__name__}: {e}"})
                continue
            t = time.perf_counter() - t0
            if t < 2 * min_round_s:  # cheap enough: a warm call sizes the repeats better
                t = time_fn(call, warmup=0, min_iters=1, max_iters=1, min_time=0.0, device=device).median
            repeats[key] = max(1, min(20, int(min_round_s / max(t, 1e-6))))
            fns[key] = call
        for g, fn in gemms.items():
            fns[g] = fn
            repeats[g] = 3
        n_rounds = rounds.get(bs, 3)
        log(f"  models batch {bs}: {len(fns) - len(gemms)} entries + {', '.join(gemms)}, {n_rounds} interleaved rounds")
        timings = time_interleaved(fns, rounds=n_rounds, warmup=1 if bs == batches[0] else 0, repeats=repeats,
                                   device=device)
        gemm_gflops = {g: matmul_flop / timings.pop(g).median / 1e9 for g in gemms}
        mm_gflops = max(gemm_gflops.values())
        matmul_runs.append({"batch": bs, "gflops": mm_gflops, **{f"{g}_gflops": v for g, v in gemm_gflops.items()}})
        for (n, mode_name), t in timings.items():
            gflops = 2.0 * info[n]["gmacs"] * bs / t.median
            rows.append({
                "model": n, "mode": mode_name, "batch": bs, "width": width,
                "crops_per_s": bs / t.median,
                "latency_p50_ms": 1e3 * t.median, "latency_p95_ms": 1e3 * t.p95, "n_calls": t.n,
                "gflops": gflops, "matmul_gflops": mm_gflops, "efficiency": gflops / mm_gflops,
                "peak_mem_mb": peaks[(n, mode_name)],
            })
        for n, mode_name, pb in profile:
            if pb == bs and (n, mode_name) in fns:
                profiles.append({"model": n, "mode": mode_name, "batch": bs, "ops": profile_ops(fns[(n, mode_name)])})
        # Side-by-side ratios from the very same rounds: per-round medians, then the median ratio.
        per_round = {k: _round_medians(t, repeats[k]) for k, t in timings.items()}
        for (n, mode_name), t in per_round.items():
            if n == REFERENCE:
                continue
            for ref_mode in {mode_name, "eager"}:
                ref = per_round.get((REFERENCE, ref_mode))
                if ref is not None:
                    ratios.append({"model": n, "mode": mode_name, "vs": REFERENCE, "vs_mode": ref_mode,
                                   "batch": bs, "throughput_ratio": paired_ratio(ref, t)})
    return {
        "device": device, "width": width, "num_classes": 1000, "info": info,
        "modes": {m.name: m.note for m in modes},
        "rows": rows, "ratios": ratios, "matmul": matmul_runs, "matmul_n": matmul_n, "profiles": profiles,
        "skipped": skipped,
    }


def profile_ops(call: Callable[[], object], *, top: int = 10) -> List[Dict[str, object]]:
    """torch.profiler's operator table of one call (after the timed rounds, so primitives are warm):
    where the time goes, for the write-up of what limits a figure."""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with profile(activities=acts) as prof:
        call()
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_cpu_time_total, reverse=True)
    return [{"op": e.key, "calls": e.count, "self_ms": e.self_cpu_time_total / 1e3,
             "share": e.self_cpu_time_total / total} for e in events[:top]]


def dense_gemms(n: int, device: str) -> Dict[str, Callable[[], object]]:
    """``n x n x n`` fp32 products: ``torch.mm``, and on CPU the oneDNN one (see the module docstring)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    fns: Dict[str, Callable[[], object]] = {"torch_mm": lambda: torch.mm(a, b)}
    if torch.device(device).type == "cpu" and torch.backends.mkldnn.is_available():
        try:
            from torch.utils import mkldnn as mkldnn_utils

            lin = mkldnn_utils.to_mkldnn(nn.Linear(n, n, bias=False).eval())
            xm = a.to_mkldnn()
            with torch.no_grad():
                lin(xm)

            def onednn():
                with torch.no_grad():
                    return lin(xm)

            fns["onednn_mm"] = onednn
        except (RuntimeError, AttributeError, ImportError):  # a build without the mkldnn tensor type
            pass
    return fns


def _round_medians(t: Timing, repeats: int) -> Timing:
    """Collapse the ``repeats`` calls of each round to their median, so rounds of two entries pair up."""
    r = max(1, repeats)
    return Timing([statistics.median(t.times[i:i + r]) for i in range(0, t.n, r)])
