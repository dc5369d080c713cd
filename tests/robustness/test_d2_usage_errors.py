"""Usage errors that Detectron2 raises (a missing --detector-config, unknown or bad keys) reach
tools/infer.py as one line on stderr and exit 2, never an AssertionError traceback."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("detectron2")
pytestmark = pytest.mark.detectron2

from crop_classifier.models import build_classifier, model_meta, save_checkpoint  # noqa: E402
from tool_loader import load_tool  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "d2" / "tiny_R18_FPN_random.yaml"


@pytest.fixture
def classifier(tmp_path):
    m = build_classifier("v3_79", 2, width=0.0625, aux_logits=False)
    return save_checkpoint(tmp_path / "clf.pth", m, model_meta(m, "v3_79", ["person", "car"]))


@pytest.fixture
def image_dir(tmp_path):
    import cv2

    d = tmp_path / "in"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), np.zeros((40, 50, 3), np.uint8))
    return d


def test_missing_detector_config_is_one_line_and_exit_2(tmp_path, classifier, image_dir):
    """Detectron2's assertion becomes a usage error: one line on stderr, exit 2, no traceback."""
    missing = tmp_path / "nope.yaml"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "infer.py"), "--detector", "faster_rcnn", "--detector-config",
         str(missing), "--classifier-weights", str(classifier), "--input", str(image_dir), "--output",
         str(tmp_path / "out"), "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [f"error: --detector-config {missing}: no such file"]


def test_unknown_keys_in_detector_opts_or_config_are_usage_errors(tmp_path, classifier, image_dir, capsys):
    infer = load_tool("infer")
    base = ["--detector", "faster_rcnn", "--classifier-weights", str(classifier), "--input", str(image_dir),
            "--output", str(tmp_path / "out"), "--no-progress", "--detector-weights", str(tmp_path / "w.pth")]
    rc = infer.main(base + ["--detector-config", str(TINY), "--detector-opts", "MODEL.ROI_HEADS.NUM_CLASSEZ", "3"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert "--detector-opts" in err and "MODEL.ROI_HEADS.NUM_CLASSEZ" in err
    rc = infer.main(base + ["--detector-config", str(TINY), "--detector-opts", "MODEL.ROI_HEADS.NUM_CLASSES", "many"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "MODEL.ROI_HEADS.NUM_CLASSES" in err
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"_BASE_: {TINY}\nMODEL:\n  ROI_HEADZ:\n    NUM_CLASSES: 3\n")
    rc = infer.main(base + ["--detector-config", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert f"--detector-config {bad}" in err and "MODEL.ROI_HEADZ" in err
