"""Per-epoch training checkpoints, Detectron2-style: ``model_epoch_NNNN.pth`` files, a ``last_checkpoint``
file naming the newest complete one, and ``model_final.pth`` at the end.

Each file is written atomically (``save_checkpoint``) before ``last_checkpoint`` is switched to it, so a
crash or a stopped run always leaves ``last_checkpoint`` pointing at a whole, good checkpoint.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, Dict, Mapping, Optional

import numpy as np
import torch

from ..models import load_checkpoint, save_checkpoint
from ..utils.io import atomic_write_text

logger = logging.getLogger(__name__)

LAST_CHECKPOINT = "last_checkpoint"
FINAL_NAME = "model_final.pth"


def capture_rng_state() -> Dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) generator states, in types ``torch.load(weights_only=True)``
    accepts (NumPy's key array becomes a tensor)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class EpochCheckpointer:
    """Writes and finds the checkpoints of one output folder (call ``save`` on the main process only)."""

    def __init__(self, output_dir: Path, keep: int = 0):
        self.output_dir = Path(output_dir)
        self.keep = keep  # newest per-epoch checkpoints kept; 0 keeps all

    @staticmethod
    def name(epoch: int) -> str:
        return f"model_epoch_{epoch:04d}.pth"

    def save(self, epoch: int, model: torch.nn.Module, meta: Mapping[str, Any], extra: Mapping[str, Any]) -> Path:
        """Checkpoint after ``epoch`` completed epochs; then ``last_checkpoint`` names it; then prune."""
        path = save_checkpoint(self.output_dir / self.name(epoch), model, meta, extra={**extra, "epoch": epoch})
        atomic_write_text(self.output_dir / LAST_CHECKPOINT, path.name)
        self._prune(keep_also=path)
        logger.info("saved checkpoint %s", path)
        return path

    def save_final(self, model: torch.nn.Module, meta: Mapping[str, Any]) -> Path:
        """Weights and meta only: the file the second stage loads."""
        return save_checkpoint(self.output_dir / FINAL_NAME, model, meta)

    def last_path(self) -> Optional[Path]:
        """The checkpoint ``last_checkpoint`` names, or None when there is none."""
        marker = self.output_dir / LAST_CHECKPOINT
        if not marker.is_file():
            return None
        path = self.output_dir / marker.read_text().strip()
        if not path.is_file():
            raise FileNotFoundError(f"{marker} names {path.name}, which does not exist in {self.output_dir}")
        return path

    def load_last(self, expected_meta: Optional[Mapping[str, Any]] = None) -> Optional[Dict[str, Any]]:
        """The last complete checkpoint (loaded with weights_only=True, meta checked), or None."""
        path = self.last_path()
        if path is None:
            return None
        ckpt = load_checkpoint(path, expected_meta)
        ckpt["path"] = path
        return ckpt

    def _prune(self, keep_also: Path) -> None:
        if self.keep <= 0:
            return
        epochs = sorted(self.output_dir.glob("model_epoch_*.pth"))
        for old in epochs[: max(0, len(epochs) - self.keep)]:
            if old != keep_also:
                old.unlink(missing_ok=True)
