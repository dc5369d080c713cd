"""tools/train_detector.py: DefaultTrainer on a COCO file; its config.yaml drives tools/infer.py as is."""
import json
import shutil
from pathlib import Path

import pytest
import torch
from data_paths import COCO128  # ../shared/data/coco128 next to the checkout, as tests/conftest.py uses
from tool_loader import load_tool

pytest.importorskip("detectron2")
pytestmark = pytest.mark.detectron2

ROOT = Path(__file__).resolve().parents[1]
ANN = COCO128 / "annotations" / "instances_train2017.json"


@pytest.mark.skipif(not ANN.is_file(), reason="coco128 (shared data) not present")
def test_train_detector_then_infer_with_its_config(tmp_path):
    # A 4-image COCO file keeps the data loading short.
    data = json.loads(ANN.read_text())
    keep = data["images"][:4]
    ids = {i["id"] for i in keep}
    sub = dict(data, images=keep, annotations=[a for a in data["annotations"] if a["image_id"] in ids])
    (tmp_path / "images").mkdir()
    for i in keep:
        shutil.copy(COCO128 / "images" / i["file_name"], tmp_path / "images" / i["file_name"])
    ann = tmp_path / "ann.json"  # beside the images: a folder input reports every non-image file it holds
    ann.write_text(json.dumps(sub))
    out = tmp_path / "det"
    rc = load_tool("train_detector").main([
        "--config-file", str(ROOT / "configs" / "d2" / "tiny_R18_FPN_random.yaml"), "--output-dir", str(out),
        "--dataset", f"t128_train={ann}:{tmp_path / 'images'}",
        "DATASETS.TRAIN", "('t128_train',)", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.BASE_LR", "0.001", "DATALOADER.NUM_WORKERS", "0", "SOLVER.CHECKPOINT_PERIOD", "1000",
    ])
    assert rc == 0
    cfg_text = (out / "config.yaml").read_text()
    assert "DETECTOR_CLASS_NAMES" in cfg_text and "toothbrush" in cfg_text
    sd = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert sd["roi_heads.box_predictor.cls_score.weight"].shape[0] == 81

    from crop_classifier.models import build_classifier, model_meta, save_checkpoint

    names = [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    clf = build_classifier("v3_79", len(names), width=0.0625, aux_logits=False)
    ckpt = save_checkpoint(tmp_path / "clf.pth", clf, model_meta(clf, "v3_79", names))
    rc = load_tool("infer").main([
        "--detector", "faster_rcnn", "--detector-config", str(out / "config.yaml"),
        "--detector-weights", str(out / "model_final.pth"), "--classifier-weights", str(ckpt),
        "--input", str(tmp_path / "images"), "--output", str(tmp_path / "infer"), "--no-progress", "--vis-limit", "0",
    ])
    assert rc == 0
    assert json.loads((tmp_path / "infer" / "summary.json").read_text())["images"] == 4


def test_dataset_argument_errors():
    from crop_classifier.d2.train import parse_dataset_arg

    assert parse_dataset_arg("a=x/ann.json") == ("a", "x/ann.json", None)
    assert parse_dataset_arg("a=x/ann.json:/imgs") == ("a", "x/ann.json", "/imgs")
    with pytest.raises(ValueError, match="NAME=ANNOTATIONS"):
        parse_dataset_arg("ann.json")


def test_config_usage_errors_are_one_line_and_exit_2(tmp_path, capsys):
    tool = load_tool("train_detector")
    config = str(ROOT / "configs" / "d2" / "demo_synthetic_R18_FPN.yaml")
    assert tool.main(["--config-file", str(tmp_path / "nope.yaml"), "--output-dir", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err == f"error: --config-file {tmp_path / 'nope.yaml'}: no such file\n"
    assert tool.main(["--config-file", config, "--output-dir", str(tmp_path / "o"), "MODEL.ROI_HEADS.NUM_CLASSEZ", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MODEL.ROI_HEADS.NUM_CLASSEZ" in err
