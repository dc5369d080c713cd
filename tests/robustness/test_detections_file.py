"""A detections file (``detections:F.json``) with boxes no image can hold: zero-area boxes and boxes wholly
outside their image are malformed entries, named (file, entry, box) and counted like NaN boxes (exit 1),
never classified; and every malformed entry is printed once on stderr, not twice.
"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from robustness_helpers import encode, smooth_rgb

ROOT = Path(__file__).resolve().parents[2]
H, W = 426, 640
GOOD = {"image_id": 1, "category_id": 1, "bbox": [100, 100, 80, 60], "score": 0.9}
PARTLY_OUTSIDE = {"image_id": 1, "category_id": 2, "bbox": [600, 400, 100, 100], "score": 0.8}  # kept (cropped)
ZERO_AREA = [[10, 10, 0, 0], [10, 10, 5, 0]]
OFF_IMAGE = [[700, 10, 50, 50], [10, 500, 40, 40], [-100, -100, 50, 50], [640, 10, 20, 20], [-20, 10, 20, 20]]
UNKNOWN_CATEGORY = {"image_id": 1, "category_id": 7, "bbox": [5, 5, 20, 20], "score": 0.9}


def _entries():
    bad = [{"image_id": 1, "category_id": 1, "bbox": b, "score": 0.9} for b in ZERO_AREA + OFF_IMAGE]
    return [GOOD, *bad, PARTLY_OUTSIDE, UNKNOWN_CATEGORY]


def _files(d: Path):
    (d / "scene.jpg").write_bytes(encode(smooth_rgb(H, W, seed=3), ".jpg"))
    ann = d / "ann.json"
    ann.write_text(json.dumps({"images": [{"id": 1, "file_name": "scene.jpg", "width": W, "height": H}],
                               "annotations": [], "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}))
    dets = d / "dets.json"
    dets.write_text(json.dumps(_entries()))
    return d / "scene.jpg", ann, dets


def test_zero_area_and_off_image_boxes_are_bad_entries_never_detections(tmp_path):
    from crop_classifier.detectors import DetectionsFile
    from crop_classifier.structures import ImageRecord

    _, ann, dets = _files(tmp_path)
    det = DetectionsFile(str(dets), annotations=str(ann))
    zero = [e for e in det.errors if "zero area" in e]
    assert [e.split(": ")[1] for e in zero] == ["entry 1", "entry 2"] and all(str(dets) in e for e in zero)
    assert "[10, 10, 0, 0]" in zero[0]
    record = ImageRecord(str(tmp_path / "scene.jpg"), np.zeros((H, W, 3), np.uint8))
    (d,) = det.detect([record])
    # Only the good box and the one partly inside are left; the off-image ones are named, with their box.
    assert d.boxes.tolist() == [[100, 100, 180, 160], [600, 400, 700, 500]]
    assert d.scores.tolist() == pytest.approx([0.9, 0.8])
    off = [e for e in det.errors if "outside" in e]
    assert len(off) == len(OFF_IMAGE)
    for k, (e, box) in enumerate(zip(off, OFF_IMAGE)):
        assert f"entry {3 + k}:" in e and str([float(v) for v in box]) in e and "scene.jpg" in e and f"{W}x{H}" in e
    assert det.errors_by_key == {"scene.jpg": off}
    # Detecting the same image again (a video frame, a retry) names each entry once.
    det.detect([record])
    assert len(det.errors) == len(ZERO_AREA) + len(OFF_IMAGE) + 1  # + the unknown category


def test_off_image_follows_the_decoded_image_size(tmp_path):
    """Without annotations (entries with file_name/category_name, what tools/infer.py writes), the image itself
    says what is outside: a box off a small image is inside a big one."""
    from crop_classifier.detectors import DetectionsFile
    from crop_classifier.structures import ImageRecord

    p = tmp_path / "d.json"
    p.write_text(json.dumps([{"file_name": "a.jpg", "category_id": 3, "category_name": "cat",
                              "bbox": [100, 50, 20, 20], "score": 0.5}]))
    small = DetectionsFile(str(p)).detect([ImageRecord("x/a.jpg", np.zeros((40, 90, 3), np.uint8))])[0]
    assert len(small) == 0
    big = DetectionsFile(str(p)).detect([ImageRecord("x/a.jpg", np.zeros((200, 300, 3), np.uint8))])[0]
    assert big.boxes.tolist() == [[100, 50, 120, 70]]


@pytest.fixture(scope="module")
def infer_run(tmp_path_factory):
    """One ``tools/infer.py --detector detections:F.json`` run as a user starts it (its own process: the CLI's
    logging setup is what prints a second copy of each warning, and pytest's log capture would hide it)."""
    from crop_classifier.models import build_classifier, save_checkpoint
    from crop_classifier.models.weights import model_meta

    d = tmp_path_factory.mktemp("dets")
    image, ann, dets = _files(d)
    torch.manual_seed(0)
    m = build_classifier("v3_79", 2, width=0.125, aux_logits=False)
    ckpt = save_checkpoint(d / "clf.pth", m, model_meta(m, "v3_79", ["cat", "dog"]))
    out = d / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "infer.py"), "--detector", f"detections:{dets}", "--categories", str(ann),
         "--classifier-weights", str(ckpt), "--input", str(image), "--output", str(out), "--no-progress",
         "--vis-limit", "0", "--device", "cpu"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    return proc, json.loads((out / "summary.json").read_text()), json.loads((out / "predictions.json").read_text())


def test_infer_reports_zero_area_and_off_image_entries_and_exits_1(infer_run):
    proc, summary, preds = infer_run
    assert proc.returncode == 1, proc.stderr
    assert summary["images"] == 1 and summary["boxes"] == 2 == summary["crops"]  # GOOD and PARTLY_OUTSIDE only
    bad = summary["bad_entries"]
    assert len(bad) == len(ZERO_AREA) + len(OFF_IMAGE) + 1, bad
    assert sum("zero area" in e for e in bad) == len(ZERO_AREA)
    assert sum("wholly outside" in e and "scene.jpg" in e for e in bad) == len(OFF_IMAGE)
    assert sorted(round(p["det_score"], 3) for p in preds) == [0.8, 0.9]


def test_each_malformed_entry_is_printed_once_on_stderr(infer_run):
    proc, summary, _ = infer_run
    for entry in summary["bad_entries"]:
        assert proc.stderr.count(entry) == 1, (entry, proc.stderr)
    assert "skipped" not in proc.stderr  # no logger summary on top of the per-entry lines
