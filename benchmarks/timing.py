"""Wall-clock timing that stays meaningful on a shared, noisy machine.

Ratios are what the benchmark's targets are about, so the helpers here time competitors *interleaved*
(A, B, A, B, ...) rather than one after the other: a burst of load from another process then slows both
sides of a round instead of skewing one of them.
"""
from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch


def synchronize(device: "torch.device | str | None") -> None:
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def percentile(values: List[float], q: float) -> float:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty list."""
    if not values:
        raise ValueError("percentile of an empty list")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class Timing:
    """Seconds per call over ``n`` timed calls (warm-up calls excluded)."""

    times: List[float] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def p95(self) -> float:
        return percentile(self.times, 95)

    @property
    def best(self) -> float:
        return min(self.times)

    def summary(self) -> Dict[str, float]:
        return {
            "n": self.n,
            "median_s": self.median,
            "p50_s": self.median,
            "p95_s": self.p95,
            "min_s": self.best,
            "mean_s": statistics.fmean(self.times),
        }


def _timed(fn: Callable[[], object], device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def time_fn(
    fn: Callable[[], object],
    *,
    warmup: int = 1,
    min_iters: int = 3,
    max_iters: int = 100,
    min_time: float = 1.0,
    device=None,
) -> Timing:
    """Time ``fn`` at least ``min_iters`` times and until ``min_time`` seconds were spent (at most
    ``max_iters`` calls). Warm-up calls (oneDNN/cuDNN primitive creation, allocator growth) are discarded."""
    for _ in range(warmup):
        _timed(fn, device)
    timing = Timing()
    spent = 0.0
    while timing.n < max_iters and (timing.n < min_iters or spent < min_time):
        dt = _timed(fn, device)
        timing.times.append(dt)
        spent += dt
    return timing


def time_interleaved(
    fns: Dict[str, Callable[[], object]],
    *,
    rounds: int = 3,
    warmup: int = 1,
    repeats: Optional[Dict[str, int]] = None,
    device=None,
) -> Dict[str, Timing]:
    """Time several functions in alternating rounds; ``repeats[name]`` calls of a function per round (for
    short functions next to long ones). Returns per-call timings for each name."""
    repeats = repeats or {}
    for fn in fns.values():
        for _ in range(warmup):
            _timed(fn, device)
    out = {name: Timing() for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(max(1, repeats.get(name, 1))):
                out[name].times.append(_timed(fn, device))
    return out


def paired_ratio(num: Timing, den: Timing) -> float:
    """Median of per-round time ratios num/den for interleaved timings (rounds align by index when both
    were timed with the same repeats), falling back to the ratio of medians."""
    if num.n == den.n and num.n > 0:
        return statistics.median(a / b for a, b in zip(num.times, den.times))
    return num.median / den.median


def matmul_gflops(
    n: int = 2048, *, device="cpu", dtype=torch.float32, warmup: int = 1, min_iters: int = 5, min_time: float = 1.0
) -> Dict[str, float]:
    """Dense ``n x n x n`` matmul throughput: the machine's practical peak that the classifier is compared to."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = time_fn(lambda: torch.mm(a, b), warmup=warmup, min_iters=min_iters, min_time=min_time, device=device)
    flops = 2.0 * n**3
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "median_s": t.median,
            "gflops": flops / t.median / 1e9, "gflops_best": flops / t.best / 1e9}


class PeakRSS:
    """Peak resident set size (psutil) above the level at entry, sampled by a background thread.

    CPU inference has no allocator high-water mark like ``torch.cuda.max_memory_allocated``; RSS sampled
    every few milliseconds while torch kernels run (they release the GIL) catches the peak of large
    activations closely enough for a "how much memory does batch N need" figure."""

    def __init__(self, interval: float = 0.002) -> None:
        import psutil

        self._proc = psutil.Process()
        self._interval = interval
        self._stop = threading.Event()
        self.baseline = 0
        self.peak = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self._interval)

    def __enter__(self) -> "PeakRSS":
        self.baseline = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def delta_mb(self) -> float:
        return (self.peak - self.baseline) / 2**20


def int8_matmul_gops(n: int = 2048, *, warmup: int = 1, min_iters: int = 5, min_time: float = 1.0) -> Dict[str, object]:
    """Dense ``n x n x n`` int8 matmul throughput on CPU (int32 accumulation, what int8 convolutions run on):
    ``torch._int_mm`` where this torch has it on CPU (2.4+), else ONNX Runtime's ``MatMulInteger`` (uint8 x
    int8, its VNNI/AMX kernels); ``{"gops": None, "how": why}`` when neither runs."""
    a = torch.randint(-128, 127, (n, n), dtype=torch.int8)
    b = torch.randint(-128, 127, (n, n), dtype=torch.int8)
    fn, how = None, None
    try:
        torch._int_mm(a[:32, :32].contiguous(), b[:32, :32].contiguous())
        fn, how = (lambda: torch._int_mm(a, b)), "torch._int_mm"
    except (RuntimeError, AttributeError, NotImplementedError):
        fn, how = _ort_matmul_integer(n)
    if fn is None:
        return {"n": n, "dtype": "int8", "gops": None, "how": how}
    t = time_fn(fn, warmup=warmup, min_iters=min_iters, min_time=min_time)
    ops = 2.0 * n**3
    return {"n": n, "dtype": "int8", "median_s": t.median, "gops": ops / t.median / 1e9,
            "gops_best": ops / t.best / 1e9, "how": how}


def _ort_matmul_integer(n: int):
    """(a call running one ``n``-cube MatMulInteger on ONNX Runtime, its name), or (None, why not)."""
    try:
        import numpy as np
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError as e:
        return None, f"no int8 GEMM: torch has no CPU _int_mm and ONNX Runtime is missing ({e})"
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "int8_gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = min(model.ir_version, 9)
    so = ort.SessionOptions()
    so.intra_op_num_threads = torch.get_num_threads()
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feed = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-128, 127, (n, n), dtype=np.int8)}
    onnx.checker.check_model(model)
    return (lambda: sess.run(["c"], feed)), "ONNX Runtime MatMulInteger"
