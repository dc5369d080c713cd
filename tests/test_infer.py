"""tools/infer.py on coco128 images: gt: and detections: first stages, a tiny Faster R-CNN, eval, bad inputs."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from crop_classifier.models import build_classifier, model_meta, save_checkpoint
from data_paths import COCO128  # ../shared/data/coco128 next to the checkout, as tests/conftest.py uses
from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[1]
ANN = COCO128 / "annotations" / "instances_train2017.json"
IMAGES = ["000000000009.jpg", "000000000025.jpg", "000000000030.jpg"]

pytestmark = pytest.mark.skipif(not ANN.is_file(), reason="coco128 (shared data) not present")


def _load_infer():
    return load_tool("infer")


infer = _load_infer()


@pytest.fixture(scope="module")
def coco_names():
    cats = sorted(json.loads(ANN.read_text())["categories"], key=lambda c: c["id"])
    return [c["name"] for c in cats]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, coco_names):
    torch.manual_seed(0)
    m = build_classifier("v3_79", len(coco_names), width=0.0625, aux_logits=False)
    return save_checkpoint(tmp_path_factory.mktemp("clf") / "clf.pth", m,
                           model_meta(m, "v3_79", coco_names, context=0.1, mode="square"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    for name in IMAGES:
        shutil.copy(COCO128 / "images" / name, d / name)
    return d


def _gt_boxes(names):
    data = json.loads(ANN.read_text())
    ids = {i["id"] for i in data["images"] if i["file_name"] in names}
    return [a for a in data["annotations"] if a["image_id"] in ids and not a.get("iscrowd", 0)]


def test_gt_first_stage_with_eval_and_a_corrupt_image(tmp_path, images, classifier):
    inputs = tmp_path / "in"
    shutil.copytree(images, inputs)
    (inputs / "corrupt.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    out = tmp_path / "out"
    rc = infer.main(["--detector", f"gt:{ANN}", "--classifier", "v3_79", "--classifier-weights", str(classifier),
                     "--input", str(inputs), "--output", str(out), "--eval", str(ANN), "--fusion", "rescore",
                     "--no-progress", "--device", "cpu"])
    assert rc == 1  # the corrupt file is reported, the rest processed
    summary = json.loads((out / "summary.json").read_text())
    assert [b["path"].endswith("corrupt.jpg") for b in summary["bad_inputs"]] == [True]
    gt = _gt_boxes(IMAGES)
    assert summary["images"] == 3 and summary["boxes"] == len(gt) == summary["crops"]
    preds = json.loads((out / "predictions.json").read_text())
    assert len(preds) == len(gt)
    p = preds[0]
    for key in ("image_id", "file_name", "category_id", "bbox", "score", "det_category_id", "det_score", "cls_score"):
        assert key in p
    assert all(q["det_score"] == 1.0 and q["category_id"] == q["det_category_id"] for q in preds)  # rescore keeps class
    assert all(abs(q["score"] - q["cls_score"]) < 1e-4 for q in preds)  # 1.0 x classifier probability
    ev = json.loads((out / "eval.json").read_text())
    assert ev["detector_only"]["AP"] == pytest.approx(1.0)  # ground-truth boxes are a perfect detector
    assert ev["detector_only"]["images"] == 3
    # Every box is an object's: a perfect background class has nothing to remove.
    assert ev["background_ceiling"]["removed"] == 0 and ev["background_ceiling"]["AP"] == ev["two_stage"]["AP"]
    assert ev["crop_top1_boxes"] == len(gt) and 0.0 <= ev["crop_top1"] <= 1.0
    assert sorted(f.name for f in (out / "vis").iterdir()) == sorted(IMAGES)


def test_detections_file_first_stage_refines_any_detector_output(tmp_path, images, classifier):
    # COCO results of some detector: ground truth with a few classes swapped and scores made up.
    data = json.loads(ANN.read_text())
    by_name = {i["file_name"]: i["id"] for i in data["images"]}
    anns = _gt_boxes(IMAGES)
    results = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.5 + 0.01 * k}
               for k, a in enumerate(anns)]
    det_file = tmp_path / "dets.json"
    det_file.write_text(json.dumps(results))
    out = tmp_path / "out"
    # Without category names the file cannot be interpreted: a clear error naming the flag.
    rc = infer.main(["--detector", f"detections:{det_file}", "--classifier-weights", str(classifier),
                     "--input", str(images), "--output", str(out), "--no-progress"])
    assert rc == 2
    rc = infer.main(["--detector", f"detections:{det_file}", "--classifier-weights", str(classifier),
                     "--categories", str(ANN), "--input", str(images), "--output", str(out), "--no-progress",
                     "--fusion", "filter", "--vis-limit", "0"])
    assert rc == 0
    preds = json.loads((out / "predictions.json").read_text())
    dets = json.loads((out / "detector_predictions.json").read_text())
    assert len(dets) == len(results)
    assert {p["image_id"] for p in dets} == {by_name[n] for n in IMAGES}
    # filter keeps the detector's class and score for the boxes it keeps
    kept_scores = sorted(round(p["score"], 4) for p in preds)
    assert set(kept_scores) <= {round(r["score"], 4) for r in results}
    assert summary_of(out)["boxes_dropped"] == len(results) - len(preds)
    assert not (out / "vis").exists()
    # our own output (file_name + category_name) is itself a valid detections file
    rc = infer.main(["--detector", f"detections:{out / 'detector_predictions.json'}", "--classifier-weights",
                     str(classifier), "--input", str(images), "--output", str(tmp_path / "again"), "--no-progress",
                     "--vis-limit", "0"])
    assert rc == 0
    assert len(json.loads((tmp_path / "again" / "detector_predictions.json").read_text())) == len(results)


def summary_of(out):
    return json.loads((out / "summary.json").read_text())


@pytest.mark.detectron2
def test_tiny_faster_rcnn_from_config_and_weights_file_with_eval(tmp_path, images, classifier):
    pytest.importorskip("detectron2")
    from detectron2.modeling import build_model

    from crop_classifier.detectors.detectron2_model import detectron2_config

    config = ROOT / "configs" / "d2" / "tiny_R18_FPN_random.yaml"
    torch.manual_seed(0)
    weights = tmp_path / "tiny_detector.pth"
    torch.save({"model": build_model(detectron2_config(str(config))).state_dict()}, weights)
    out = tmp_path / "out"
    rc = infer.main(["--detector", "faster_rcnn", "--detector-config", str(config), "--detector-weights", str(weights),
                     "--classifier", "v3_79", "--classifier-weights", str(classifier), "--input", str(images),
                     "--output", str(out), "--eval", str(ANN), "--no-progress", "--batch-size", "2"])
    assert rc == 0
    s = summary_of(out)
    assert s["images"] == 3 and s["boxes"] > 0 and s["crops"] == s["boxes"]  # 80 COCO classes map to themselves
    assert [c["name"] for c in s["categories"]][:3] == ["person", "bicycle", "car"]
    assert [c["id"] for c in s["categories"]][:3] == [1, 2, 3]  # the annotations' own category ids
    ev = s["eval"]
    assert set(ev) >= {"detector_only", "two_stage", "crop_top1"}
    assert ev["two_stage"]["images"] == 3
    preds = json.loads((out / "predictions.json").read_text())
    assert all(p["file_name"].endswith(tuple(IMAGES)) for p in preds)


@pytest.mark.detectron2
def test_model_zoo_detector_offline_names_the_weights_flag(tmp_path, images, classifier, capsys):
    pytest.importorskip("detectron2")
    rc = infer.main(["--detector", "faster_rcnn", "--classifier-weights", str(classifier), "--input", str(images),
                     "--output", str(tmp_path / "out"), "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err
    if rc == 0:
        pytest.skip("this machine can download the model zoo weights")
    assert rc == 2 and "--detector-weights" in err


def test_classifier_errors(tmp_path, images, classifier, capsys):
    base = ["--detector", f"gt:{ANN}", "--input", str(images), "--output", str(tmp_path / "o"), "--no-progress"]
    assert infer.main(base) == 2
    assert "--classifier-weights is required" in capsys.readouterr().err
    assert infer.main(base + ["--classifier-weights", str(classifier), "--classifier", "v3_151"]) == 2
    err = capsys.readouterr().err
    assert "v3_151" in err and "v3_79" in err
    # the loader names its parameters (precision, path); the tool says them as its flags, on one line
    assert infer.main(base + ["--classifier-weights", str(classifier), "--precision", "fp16", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "error: --precision: fp16: CPUs have no fast fp16 convolutions; use fp32 (or bf16 on a CPU with AVX-512 "
        "BF16/AMX, or int8 via tools/quantize.py)"]
    assert infer.main(base + ["--classifier-weights", ","]) == 2
    assert capsys.readouterr().err.strip() == "error: --classifier-weights: ',': no file named"
    assert not (tmp_path / "o" / "predictions.json").exists()


def test_video_frames_and_cli_exit_code(tmp_path, classifier):
    video = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (160, 120))
    for k in range(4):
        frame = np.full((120, 160, 3), 40 * k, dtype=np.uint8)
        writer.write(frame)
    writer.release()
    det = [{"file_name": "clip.avi#000002", "category_id": 1, "category_name": "person", "bbox": [10, 10, 50, 60], "score": 0.9}]
    det_file = tmp_path / "d.json"
    det_file.write_text(json.dumps(det))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "infer.py"), "--detector", f"detections:{det_file}", "--classifier-weights",
         str(classifier), "--input", str(video), str(tmp_path / "missing.jpg"), "--output", str(out),
         "--video-stride", "2", "--no-progress"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert "missing.jpg: no such file" in proc.stdout
    s = summary_of(out)
    assert s["images"] == 2  # frames 0 and 2
    preds = json.loads((out / "predictions.json").read_text())
    # frames are named VIDEO#FRAME, so a detections file can address one of them
    assert [p["file_name"] for p in preds] == [f"{video}#000002"]
    assert preds[0]["det_category_name"] == "person" and preds[0]["det_score"] == pytest.approx(0.9)
    assert sorted(p.name for p in (out / "vis").iterdir()) == ["clip.avi#000000.jpg", "clip.avi#000002.jpg"]
