"""tools/train.py and tools/evaluate.py end to end on a tiny synthetic set, as a user runs them."""
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from tool_loader import load_tool

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "cpu" / "v3_79_w025_synthetic.yaml"


def _run(tool, *args):
    # the package of this checkout, not whichever one is installed in the environment
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(REPO / "tools" / tool), *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _tool_main(tool):
    return load_tool(tool).main


def test_train_resume_evaluate(tmp_path):
    data = tmp_path / "data"
    out = tmp_path / "run"
    overrides = ["DATASETS.TRAIN", f"['synthetic:{data}/train:1:1']", "DATASETS.TEST", f"['synthetic:{data}/val:1:5']",
                 "SOLVER.IMS_PER_BATCH", "4", "DATALOADER.NUM_WORKERS", "1", "TEST.EVAL_PERIOD", "0"]
    r = _run("train.py", "--config-file", CONFIG, "--output-dir", out, "--no-progress", *overrides,
             "SOLVER.MAX_EPOCHS", "1")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    assert summary["model_final"] == str(out / "model_final.pth")
    assert (data / "train" / "annotations.json").is_file()  # the synthetic set was generated on first use
    assert (out / "last_checkpoint").read_text().strip() == "model_epoch_0001.pth"
    assert (out / "config.yaml").is_file() and (out / "log.txt").is_file()

    # --resume continues at epoch 2 with the first run's optimiser state.
    r = _run("train.py", "--config-file", CONFIG, "--output-dir", out, "--no-progress", "--resume", *overrides,
             "SOLVER.MAX_EPOCHS", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resumed from" in r.stderr and "after epoch 1" in r.stderr
    assert (out / "last_checkpoint").read_text().strip() == "model_epoch_0002.pth"
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()
              if json.loads(line)["kind"] == "epoch"]
    assert epochs == [1, 2]
    meta = torch.load(out / "model_final.pth", weights_only=True)["meta"]
    assert meta["crop"] == {"context": 0.1, "mode": "square"} and meta["width"] == 0.25

    r = _run("evaluate.py", "--config-file", CONFIG, "--weights", out / "model_final.pth",
             "--output-dir", tmp_path / "eval", "--no-progress", "DATASETS.TEST", f"['synthetic:{data}/val:1:5']")
    assert r.returncode == 0, r.stderr[-3000:]
    printed = json.loads(r.stdout)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    from crop_classifier.engine.data import load_dataset

    expected = len(load_dataset(f"synthetic:{data}/val:1:5", min_size=32).samples)  # the config's MIN_BOX_SIZE_TEST
    assert printed["top1"] == results["top1"] and results["num_samples"] == expected > 0
    assert results["weights"] == str(out / "model_final.pth")
    assert (tmp_path / "eval" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_config_key_is_reported(tmp_path, capsys):
    train_main = _tool_main("train")
    assert train_main(["--config-file", str(CONFIG), "SOLVER.BASE_LRR", "0.1"]) == 2
    assert "SOLVER.BASE_LRR" in capsys.readouterr().err
    evaluate_main = _tool_main("evaluate")
    assert evaluate_main(["--config-file", str(CONFIG), "--weights", str(tmp_path / "missing.pth")]) == 2
    assert "missing.pth" in capsys.readouterr().err

