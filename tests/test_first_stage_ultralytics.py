"""ultralytics:FILE first stages: without the package, one line naming the extra (exit 2 from tools/infer.py);
with it (an optional extra), a YOLO built from a model YAML (random weights) saved and run as a first stage."""
import sys
from pathlib import Path

import numpy as np
import pytest

from crop_classifier.detectors import build_first_stage
from crop_classifier.errors import BackendUnavailableError, UsageError
from crop_classifier.structures import ImageRecord
from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[1]


def test_missing_package_names_the_extra(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ultralytics", None)  # what an absent package looks like to import
    weights = tmp_path / "yolo.pt"
    weights.write_bytes(b"not needed: the package check comes first")
    with pytest.raises(BackendUnavailableError, match=r"pip install 'crop_classifier\[ultralytics\]'"):
        build_first_stage(f"ultralytics:{weights}")
    out = tmp_path / "out"
    rc = load_tool("infer").main(["--detector", f"ultralytics:{weights}", "--classifier-weights",
                                  str(ROOT / "demo_weights" / "classifier.pth"), "--input", str(tmp_path),
                                  "--output", str(out), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "crop_classifier[ultralytics]" in err[0] and not out.exists()


@pytest.fixture(scope="module")
def yolo_file(tmp_path_factory):
    ultralytics = pytest.importorskip("ultralytics")
    path = tmp_path_factory.mktemp("yolo") / "yolov8n_random.pt"
    model = ultralytics.YOLO("yolov8n.yaml")  # built from the YAML: random weights, no download
    model.model.names = {i: f"thing{i}" for i in range(80)}  # the names a trained checkpoint carries
    model.save(str(path))
    return path


def test_a_yolo_checkpoint_runs_as_a_first_stage(yolo_file):
    det = build_first_stage(f"ultralytics:{yolo_file}", score_thresh=0.0)
    assert det.class_names == [f"thing{i}" for i in range(80)]
    rng = np.random.default_rng(0)
    recs = [ImageRecord(f"{i}.jpg", rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)) for i in range(2)]
    out = det.detect(recs)
    assert len(out) == 2 and all(len(d) > 0 for d in out)  # score threshold 0: random weights give boxes
    for d in out:
        assert d.boxes.dtype == np.float32 and (d.boxes[:, [0, 2]] <= 160).all() and (d.boxes[:, [1, 3]] <= 96).all()
        assert ((d.classes >= 0) & (d.classes < 80)).all()


def test_not_a_checkpoint_is_a_usage_error(tmp_path):
    pytest.importorskip("ultralytics")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"junk")
    with pytest.raises(UsageError, match="bad.pt: not an Ultralytics checkpoint"):
        build_first_stage(f"ultralytics:{bad}")
    with pytest.raises(UsageError, match="no such file"):
        build_first_stage(f"ultralytics:{tmp_path / 'missing.pt'}")
