"""tools/fit_fusion.py on a noisy first stage: never below the detector on its split, applied as fitted by
tools/infer.py --fusion-file, refused for another classifier; ground truth as the first stage keeps AP 1.0."""
import json
from pathlib import Path

import pytest
import torch

from crop_classifier.data.synthetic import generate_scenes
from crop_classifier.detectors.noisy import noisy_detections
from crop_classifier.inference.fit import MIN_GAIN, choose
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
    assert v["candidates"][0]["rule"] == "detector alone" and v["min_gain"] == MIN_GAIN
    if v["fitted"]["rule"] != "detector alone":
        assert v["fitted"]["AP"] > v["detector_only"]["AP"] + MIN_GAIN
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


def test_a_rule_must_add_more_than_the_minimum_gain_to_be_chosen():
    ap = lambda *v: [(f"r{i}", i, {"AP": a}) for i, a in enumerate(v)]  # noqa: E731  (simplest first)
    assert choose(ap(0.40, 0.40 + MIN_GAIN / 2))[0] == "r0"  # within the split's noise: the simpler rule
    assert choose(ap(0.40, 0.40 + MIN_GAIN / 2, 0.43, 0.43 + MIN_GAIN / 2))[0] == "r2"
    assert choose(ap(0.40, 0.39, 0.40 + 2 * MIN_GAIN))[0] == "r2"  # measured against the choice so far
    assert choose(ap(0.40, 0.30))[0] == "r0"


def test_ground_truth_as_first_stage_keeps_ap_one_with_the_default_options(tmp_path, split):
    d, ann, _ = split
    code, s = _infer(tmp_path, d, ann, f"gt:{ann}")
    assert code == 0
    assert s["eval"]["detector_only"]["AP"] == pytest.approx(1.0)
    assert s["eval"]["two_stage"]["AP"] == pytest.approx(1.0)
    assert s["boxes_dropped"] == 0


def test_a_detections_file_that_names_no_input_fails_and_missing_categories_are_named(tmp_path, split, capsys):
    d, ann, dets = split
    entries = json.loads(dets.read_text())
    stray = tmp_path / "stray.json"
    stray.write_text(json.dumps([{**e, "file_name": "elsewhere.jpg", "image_id": 999} for e in entries[:5]]))
    out = tmp_path / "o"
    code = infer.main(["--detector", f"detections:{stray}", "--classifier-weights", str(DEMO_CLASSIFIER), "--input",
                       str(d / "images"), "--output", str(out), "--vis-limit", "0", "--no-progress"])
    assert code == 1
    s = json.loads((out / "summary.json").read_text())
    assert any(str(stray) in e and "no entry names any input" in e for e in s["bad_entries"])
    # a category the annotations lack: evaluated without it, and said so
    zebra = tmp_path / "zebra.json"
    zebra.write_text(json.dumps(entries + [{**entries[0], "category_id": 99, "category_name": "zebra"}]))
    coco = json.loads(ann.read_text())
    wider = tmp_path / "categories.json"  # the detector knows zebra, the evaluation annotations do not
    wider.write_text(json.dumps({**coco, "categories": coco["categories"] + [{"id": 99, "name": "zebra"}]}))
    code = infer.main(["--detector", f"detections:{zebra}", "--classifier-weights", str(DEMO_CLASSIFIER), "--input",
                       str(d / "images"), "--output", str(out), "--categories", str(wider), "--eval", str(ann),
                       "--vis-limit", "0", "--no-progress"])
    assert code == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["eval"]["categories_missing"] == {"zebra": 2}  # the detector's and the two-stage output's
    assert "zebra" in capsys.readouterr().out


def test_the_python_entry_gives_tools_infer_s_numbers(tmp_path, split):
    import numpy as np

    import crop_classifier as cc
    from crop_classifier.data.images import read_rgb

    d, ann, dets = split
    code, _ = _infer(tmp_path, d, ann, f"detections:{dets}", "--fusion", "rescore", "--min-box-size", "24")
    assert code == 0
    cli = json.loads((tmp_path / "out" / "predictions.json").read_text())
    names = [c["name"] for c in sorted(json.loads(ann.read_text())["categories"], key=lambda c: c["id"])]
    ids = {c["name"]: c["id"] for c in json.loads(ann.read_text())["categories"]}
    stage = cc.SecondStage(cc.load_classifier(DEMO_CLASSIFIER, device="cpu"), detector_classes=names,
                           config=cc.SecondStageConfig(fusion="rescore", min_box_size=24))
    entries = json.loads(dets.read_text())
    for file_name in sorted({e["file_name"] for e in entries}):
        mine = [e for e in entries if e["file_name"] == file_name]
        xyxy = np.array([[x, y, x + w, y + h] for x, y, w, h in (e["bbox"] for e in mine)])
        out = stage(read_rgb(str(d / file_name)), cc.Detections(
            xyxy=xyxy, class_id=[names.index(e["category_name"]) for e in mine], confidence=[e["score"] for e in mine]))
        theirs = sorted((r["category_id"], round(r["score"], 4)) for r in cli
                        if Path(r["file_name"]).name == Path(file_name).name)
        ours = sorted((ids[n], round(float(s), 4)) for n, s in zip(out.data["class_name"], out.confidence))
        assert [c for c, _ in ours] == [c for c, _ in theirs], file_name
        np.testing.assert_allclose([v for _, v in ours], [v for _, v in theirs], atol=2e-4)  # JSON rounding
