"""torchvision:NAME first stages, built with random weights saved as a local state dict (nothing is downloaded):
COCO class names that the class map accepts, boxes on the original image, the model's own score threshold,
batching equal to one at a time, builder arguments from --detector-opts, and every bad input a clear error
(a non-detection name, offline pretrained weights, a state dict of another model)."""
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from crop_classifier.detectors import TorchvisionDetector, build_first_stage
from crop_classifier.detectors.torchvision_model import unique_class_names
from crop_classifier.errors import CheckpointError, UsageError, WeightsUnavailableError
from crop_classifier.second_stage.class_map import ClassMap
from crop_classifier.structures import ImageRecord
from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[1]
FRCNN = "fasterrcnn_mobilenet_v3_large_fpn"
SMALL = ["min_size", "64", "max_size", "128"]  # builder arguments: a small internal resize keeps it fast
PERSON = 1  # torchvision's COCO label of "person"


def _save_random(path, name, **kwargs):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, weights_backbone=None, **kwargs)
    state = model.state_dict()
    if "roi_heads.box_predictor.cls_score.bias" in state:
        # random heads give every class ~1/91; a large "person" bias makes its scores spread over (0, 1)
        state["roi_heads.box_predictor.cls_score.bias"][PERSON] = 5.0
    torch.save(state, path)
    return str(path), state


@pytest.fixture(scope="module")
def frcnn_file(tmp_path_factory):
    return _save_random(tmp_path_factory.mktemp("tv") / "frcnn.pth", FRCNN)


def _records(seed=0, n=2, hw=(120, 200)):
    rng = np.random.default_rng(seed)
    return [ImageRecord(f"{i}.jpg", rng.integers(0, 255, (*hw, 3), dtype=np.uint8)) for i in range(n)]


def test_class_names_are_cocos_with_unique_placeholders_the_class_map_accepts(frcnn_file):
    det = build_first_stage(f"torchvision:{FRCNN}", weights=frcnn_file[0], opts=SMALL)
    names = det.class_names
    cats = torchvision.models.get_model_weights(FRCNN).DEFAULT.meta["categories"]
    assert len(names) == len(cats) == 91 and len(set(names)) == 91
    assert names[0] == "__background__" and names[PERSON] == "person" and names[12] == "N/A_12"
    assert [n for n, c in zip(names, cats) if n != c] == [f"N/A_{i}" for i, c in enumerate(cats) if c == "N/A"]
    cm = ClassMap(names, ["person", "car", "dog"])  # repeated names would be refused here
    assert cm.targets("person") == ["person"] and cm.targets("N/A_12") == []
    with pytest.raises(ValueError, match="repeated"):
        ClassMap(cats, ["person"])  # why the placeholders are renamed
    assert unique_class_names(["a", "b", "a"]) == ["a_0", "b", "a_2"]


def test_local_state_dict_boxes_on_the_original_image_and_builder_kwargs(frcnn_file):
    path, state = frcnn_file
    det = build_first_stage(f"torchvision:{FRCNN}", weights=path, opts=SMALL, score_thresh=0.0)
    loaded = det.model.state_dict()
    assert all(torch.equal(loaded[k].cpu(), v) for k, v in state.items())
    assert det.model.transform.min_size == (64,) and det.model.transform.max_size == 128
    d = det.detect(_records(n=1))[0]
    assert len(d) > 10 and d.boxes.dtype == np.float32 and d.classes.dtype == np.int64
    # the model saw a 107 x 64 resize; its boxes come back in the 200 x 120 image's pixels
    assert (d.boxes[:, [0, 2]] >= 0).all() and (d.boxes[:, [0, 2]] <= 200).all() and (d.boxes[:, [1, 3]] <= 120).all()
    assert d.boxes[:, 2].max() > 110 and d.boxes[:, 3].max() > 66
    assert (d.classes >= 1).all() and (d.classes < 91).all()


def test_score_thresh_is_the_models_own(frcnn_file):
    recs = _records(n=1)
    low = TorchvisionDetector(FRCNN, frcnn_file[0], score_thresh=0.0, model_kwargs={"min_size": 64, "max_size": 128})
    high = TorchvisionDetector(FRCNN, frcnn_file[0], score_thresh=0.5, model_kwargs={"min_size": 64, "max_size": 128})
    assert low.model.roi_heads.score_thresh == 0.0 and high.model.roi_heads.score_thresh == 0.5
    a, b = low.detect(recs)[0], high.detect(recs)[0]
    assert (b.scores >= 0.5).all() and 0 < len(b) < len(a)
    person_high = sorted(a.scores[(a.classes == PERSON) & (a.scores >= 0.5)].tolist(), reverse=True)
    np.testing.assert_allclose(sorted(b.scores.tolist(), reverse=True)[:5], person_high[:5], atol=1e-5)


def test_batched_equals_one_at_a_time(frcnn_file):
    det = TorchvisionDetector(FRCNN, frcnn_file[0], score_thresh=0.3, model_kwargs={"min_size": 64, "max_size": 128})
    recs = _records(seed=3, n=3)
    batched = det.detect(recs)
    single = [det.detect([r])[0] for r in recs]
    for b, s in zip(batched, single):
        assert len(b) == len(s) > 0
        np.testing.assert_allclose(b.boxes, s.boxes, atol=1e-3)
        np.testing.assert_allclose(b.scores, s.scores, atol=1e-4)
        assert (b.classes == s.classes).all()
    assert not np.array_equal(batched[0].boxes, batched[1].boxes)
    assert det.detect([]) == []


def test_ssdlite_threshold_lives_on_the_model(tmp_path):
    path, _ = _save_random(tmp_path / "ssd.pth", "ssdlite320_mobilenet_v3_large")
    det = TorchvisionDetector("ssdlite320_mobilenet_v3_large", path, score_thresh=0.011)
    assert det.model.score_thresh == 0.011
    d = det.detect(_records(n=1, hw=(90, 160)))[0]
    assert (d.scores >= 0.011).all() and (d.boxes[:, [0, 2]] <= 160).all() and (d.boxes[:, [1, 3]] <= 90).all()
    with pytest.raises(CheckpointError, match=r"--detector-weights .*ssd.pth: does not fit torchvision:" + FRCNN):
        TorchvisionDetector(FRCNN, path)


def test_bad_names_and_offline_weights_are_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(UsageError, match=r"torchvision:resnet50 is not a torchvision detection model; detection "
                                         r"models: .*fasterrcnn_resnet50_fpn_v2.*ssdlite320_mobilenet_v3_large"):
        build_first_stage("torchvision:resnet50")
    with pytest.raises(UsageError, match="--detector-weights .*nope.pth: no such file"):
        build_first_stage(f"torchvision:{FRCNN}", weights=str(tmp_path / "nope.pth"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # an empty cache: the real loading code goes online

    def offline(url, *args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError, match=r"cannot download weights .*COCO_V1 from https://download"
                                                      r".*offline: pass a local state dict with --detector-weights"):
        TorchvisionDetector(FRCNN, model_kwargs={"min_size": 64})
    with pytest.raises(WeightsUnavailableError, match="not in the torch hub cache .*--detector-weights"):
        TorchvisionDetector(FRCNN, download=False)


def test_infer_tool_offline_and_bad_name_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    infer = load_tool("infer")
    common = ["--classifier-weights", str(ROOT / "demo_weights" / "classifier.pth"), "--input", str(tmp_path),
              "--no-progress", "--device", "cpu"]
    for detector, expected in ((f"torchvision:{FRCNN}", "--detector-weights"), ("torchvision:vit_b_16", "not a torchvision detection model")):
        out = tmp_path / detector.replace(":", "_")
        assert infer.main(["--detector", detector, "--output", str(out), "--detector-opts", *SMALL, *common]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and expected in err[0] and not out.exists()
