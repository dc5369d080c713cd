"""CPU thread layout for the torch form: N parallel single-thread streams instead of 1 stream x N threads.

Inception's many small convolutions keep N intra-op threads only partly busy; splitting a batch into N parts
run at the same time, one thread each, can fill the cores better (OpenVINO gained about 10 % that way:
docs/benchmarks.md, deploy). ``StreamedClassifier`` wraps any classifier with ``InferenceClassifier``'s call: during a call
torch's intra-op pool is set to ``threads_per_stream`` (torch's thread count is process-wide) and the parts
run on Python threads (torch kernels release the GIL); the previous thread count is restored after.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor

from ..errors import ParameterError
from .runtimes import check_positive, split_batch

_LOCK = threading.Lock()  # one streamed call at a time changes torch's thread count


class StreamedClassifier:
    """``clf`` run as ``streams`` parallel streams of ``threads_per_stream`` threads each (CPU)."""

    routes = None  # a single input size (a routed set wraps these: models.inference.RoutedClassifier)

    def __init__(self, clf: Any, streams: int, threads_per_stream: int = 1):
        check_positive("streams", streams)
        check_positive("threads_per_stream", threads_per_stream)
        if torch.device(clf.device).type != "cpu":
            raise ParameterError("streams", f"parallel CPU streams need a classifier on cpu (got {clf.device})")
        self.clf = clf
        self.streams = int(streams)
        self.threads_per_stream = int(threads_per_stream)
        self._pool = ThreadPoolExecutor(self.streams)

    def __getattr__(self, name: str) -> Any:  # meta, crop, class_names, input_size, device, precision
        if name == "clf":
            raise AttributeError(name)
        return getattr(self.clf, name)

    def _map(self, fn, x: Tensor) -> Tensor:
        parts = split_batch(int(x.shape[0]), self.streams, None)
        if len(parts) <= 1:
            return fn(x)
        with _LOCK:
            before = torch.get_num_threads()
            torch.set_num_threads(self.threads_per_stream)
            try:
                return torch.cat(list(self._pool.map(lambda s: fn(x[s]), parts)))
            finally:
                torch.set_num_threads(before)

    def logits(self, x: Tensor) -> Tensor:
        return self._map(self.clf.logits, x)

    def __call__(self, x: Tensor) -> Tensor:
        return self._map(self.clf, x)

    def eval(self) -> "StreamedClassifier":
        return self
