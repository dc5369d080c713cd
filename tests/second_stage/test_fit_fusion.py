"""tools/fit_fusion.py on a noisy first stage: never below the detector on its split, applied as fitted by
tools/infer.py --fusion-file, refused for another classifier; ground truth as the first stage keeps AP 1.0."""
import json
from pathlib import Path

import pytest
import torch

from crop_classifier.data.synthetic import generate_scenes
from crop_classifier.detectors.noisy import noisy_detections
from crop_classifier.models import build_classifier, model_meta, save_checkpoint
from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[2]
DEMO_CLASSIFIER = ROOT / "demo_weights" / "classifier.pth"

fit_fusion = load_tool("fit_fusion")
infer = load_tool("infer")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    d = tmp_path_factory.mktemp("val")
    ann = generate_scenes(d, 6, seed=3, image_size=256, split_name="val")
    coco = json.loads(Path(ann).read_text())
    dets = d / "noisy.json"
    dets.write_text(json.dumps(noisy_detections(coco, seed=1)))
    return d, Path(ann), dets


def _infer(tmp_path, d, ann, detector, *extra):
    out = tmp_path / "out"
    code = infer.main(["--detector", detector, "--classifier-weights", str(DEMO_CLASSIFIER), "--input",
                       str(d / "images"), "--output", str(out), "--categories", str(ann), "--eval", str(ann),
                       "--vis-limit", "0", "--no-progress", *extra])
    return code, json.loads((out / "summary.json").read_text()) if code in (0, 1) else None


def test_fitted_fusion_is_never_below_the_detector_and_infer_applies_it(tmp_path, split):
    d, ann, dets = split
    fusion = tmp_path / "fusion.json"
    assert fit_fusion.main(["--detector", f"detections:{dets}", "--categories", str(ann), "--classifier-weights",
                            str(DEMO_CLASSIFIER), "--input", str(d / "images"), "--annotations", str(ann),
                            "--output", str(fusion), "--no-progress"]) == 0
    saved = json.loads(fusion.read_text())
    v = saved["validation"]
    assert v["fitted"]["AP"] >= v["detector_only"]["AP"]
    assert v["candidates"][0]["rule"] == "detector alone"
    assert saved["fitted_for"]["detector_classes"] and len(saved["fitted_for"]["classifier_probe"]) == 6
    code, s = _infer(tmp_path, d, ann, f"detections:{dets}", "--fusion-file", str(fusion))
    assert code == 0
    assert s["eval"]["detector_only"]["AP"] == pytest.approx(v["detector_only"]["AP"], abs=1e-4)
    assert s["eval"]["two_stage"]["AP"] == pytest.approx(v["fitted"]["AP"], abs=1e-4)  # the same numbers

    # another classifier of the same classes: refused, naming the file
    meta = torch.load(DEMO_CLASSIFIER, weights_only=True, map_location="cpu")["meta"]
    other = build_classifier("v3_79", len(meta["class_names"]), width=0.0625, aux_logits=False)
    other_path = save_checkpoint(tmp_path / "other.pth", other, model_meta(other, "v3_79", meta["class_names"]))
    code = infer.main(["--detector", f"detections:{dets}", "--classifier-weights", str(other_path), "--input",
                       str(d / "images"), "--output", str(tmp_path / "o2"), "--categories", str(ann),
                       "--fusion-file", str(fusion), "--no-progress"])
    assert code == 2


def test_ground_truth_as_first_stage_keeps_ap_one_with_the_default_options(tmp_path, split):
    d, ann, _ = split
    code, s = _infer(tmp_path, d, ann, f"gt:{ann}")
    assert code == 0
    assert s["eval"]["detector_only"]["AP"] == pytest.approx(1.0)
    assert s["eval"]["two_stage"]["AP"] == pytest.approx(1.0)
    assert s["boxes_dropped"] == 0
