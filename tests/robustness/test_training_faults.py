"""Training faults, through tools/train.py: a run killed (SIGKILL) mid-epoch resumes from its last complete
checkpoint, and a NaN loss stops with one clear error while the last good checkpoint stays usable."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crop_classifier.models import load_checkpoint
from tool_loader import load_tool

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "cpu" / "v3_79_w025_synthetic.yaml"


def _overrides(tmp_path, epochs, scenes=3):
    # width 0.125, a few synthetic scenes (3: several iterations of 4 crops per epoch), no evaluation
    return ["--config-file", str(CONFIG), "--output-dir", str(tmp_path / "run"), "--no-progress",
            "MODEL.WIDTH", "0.125", "DATASETS.TRAIN", f"['synthetic:{tmp_path}/data:{scenes}:1']", "DATASETS.TEST", "[]",
            "SOLVER.IMS_PER_BATCH", "4", "SOLVER.LOG_PERIOD", "1", "SOLVER.CHECKPOINT_PERIOD", "1",
            "SOLVER.CHECKPOINTS_TO_KEEP", "0", "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0",
            "SOLVER.MAX_EPOCHS", str(epochs)]


def _checkpoints_all_load(run: Path) -> int:
    """Every checkpoint file present loads (none is half-written); returns the epoch last_checkpoint names."""
    for p in run.glob("model_*.pth"):
        ckpt = load_checkpoint(p)
        assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point()), p
    name = (run / "last_checkpoint").read_text().strip()
    return int(load_checkpoint(run / name)["epoch"])


def test_sigkill_mid_epoch_then_resume(tmp_path):
    # PYTHONPATH: the package of this checkout, not whichever one is installed in the environment
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "train.py"), *_overrides(tmp_path, 50)], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        # Kill once a checkpoint exists and an iteration of a later epoch has been logged: mid-epoch.
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if (run / "last_checkpoint").is_file() and (run / "metrics.jsonl").is_file():
                done = int((run / "last_checkpoint").read_text().strip()[12:16] or 0)
                recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
                if any(r["kind"] == "train" and done < r["epoch"] < done + 1 for r in recs):
                    break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "model_final.pth").exists()
    epoch = _checkpoints_all_load(run)
    assert epoch >= 1

    r = subprocess.run([sys.executable, str(REPO / "tools" / "train.py"), "--resume", *_overrides(tmp_path, epoch + 1)],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"after epoch {epoch}" in r.stderr  # continued from the last complete checkpoint: at most one epoch lost
    assert _checkpoints_all_load(run) == epoch + 1
    assert load_checkpoint(run / "model_final.pth")["meta"]["width"] == 0.125


def _train_main():
    return load_tool("train").main


def test_nan_loss_through_the_tool_keeps_the_last_good_checkpoint(tmp_path, monkeypatch, capsys):
    from crop_classifier.engine.trainer import Trainer

    real = Trainer.train_one_epoch

    def poisoned(self, epoch):  # from the second epoch on, the model outputs NaN
        if epoch == 1:
            self.module.register_forward_hook(
                lambda m, i, out: tuple(o * float("nan") for o in out) if isinstance(out, tuple) else out * float("nan"))
        return real(self, epoch)

    monkeypatch.setattr(Trainer, "train_one_epoch", poisoned)
    run = tmp_path / "run"
    assert _train_main()(_overrides(tmp_path, 3, scenes=1) + ["SOLVER.IMS_PER_BATCH", "2"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    line = [x for x in err if x.startswith("error:")]
    assert len(line) == 1 and "not finite" in line[0] and "epoch 2" in line[0] and "model_epoch_0001.pth" in line[0]
    assert _checkpoints_all_load(run) == 1
    assert not (run / "model_epoch_0002.pth").exists() and not (run / "model_final.pth").exists()

    monkeypatch.setattr(Trainer, "train_one_epoch", real)
    assert _train_main()(["--resume"] + _overrides(tmp_path, 2, scenes=1) + ["SOLVER.IMS_PER_BATCH", "2"]) == 0
    assert _checkpoints_all_load(run) == 2
