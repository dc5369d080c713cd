"""Training metrics to JSON lines (``metrics.jsonl``) and TensorBoard (``tb/``), main process only."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Optional


class MetricsWriter:
    """``write(record)`` appends one JSON line and logs each numeric field as ``{kind}/{key}`` at ``step``.

    A resumed run appends to the same files. A disabled writer (non-main processes) does nothing.
    """

    def __init__(self, output_dir: Path, *, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(output_dir) / "metrics.jsonl"
        self._tb_dir = Path(output_dir) / "tb"
        self._tensorboard = tensorboard
        self._tb = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, kind: str, step: int, values: Dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"kind": kind, "step": int(step), **values}
        with open(self.path, "a") as f:
            # One line per write, flushed at once: a reader never sees a partial record mid-run.
            f.write(json.dumps(record) + "\n")
        if self._tensorboard:
            tb = self._writer()
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    tb.add_scalar(f"{kind}/{key}", value, step)

    def _writer(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter  # imported on first use: it is slow to import

            self._tb = SummaryWriter(str(self._tb_dir))
        return self._tb

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def read_metrics(path: Path, kind: Optional[str] = None) -> list:
    """The records of a ``metrics.jsonl`` file (optionally of one kind)."""
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return [r for r in records if kind is None or r["kind"] == kind]
