"""The plain Detectron2 first stage (crop_classifier.detectors.detectron2_model): built without the plugin,
DefaultPredictor's preprocessing, class names. Its usage errors: tests/robustness/test_d2_usage_errors.py."""
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")
pytestmark = pytest.mark.detectron2

from detectron2.modeling import build_model  # noqa: E402

from crop_classifier.detectors import ImageRecord  # noqa: E402
from crop_classifier.detectors.detectron2_model import Detectron2Detector, detectron2_config  # noqa: E402
from crop_classifier.errors import UsageError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "d2" / "tiny_R18_FPN_random.yaml"
DEMO = ROOT / "configs" / "d2" / "demo_synthetic_R18_FPN.yaml"


def random_weights(config, path, *opts):
    torch.manual_seed(0)
    torch.save({"model": build_model(detectron2_config(str(config), list(opts))).state_dict()}, path)
    return path


def test_plugin_config_loads_as_a_plain_first_stage_without_the_plugin(tmp_path):
    """The demo's config (narrow backbone, MODEL.CROP_CLASSIFIER keys, CropClassifierRCNN-free) builds a first
    stage in a process that never imports crop_classifier.d2; class names come from the config's subtree."""
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from crop_classifier.detectors import build_first_stage, ImageRecord
        from crop_classifier.detectors.detectron2_model import detectron2_config
        import torch
        from detectron2.modeling import build_model
        torch.manual_seed(0)
        torch.save({{"model": build_model(detectron2_config({str(DEMO)!r})).state_dict()}}, {str(tmp_path / 'w.pth')!r})
        det = build_first_stage("faster_rcnn", config_file={str(DEMO)!r}, weights={str(tmp_path / 'w.pth')!r},
                                score_thresh=0.0)
        out = det.detect([ImageRecord("x.png", np.zeros((64, 80, 3), np.uint8))])
        assert len(out) == 1
        assert "crop_classifier.d2" not in sys.modules, sorted(m for m in sys.modules if m.startswith("crop_classifier"))
        print(len(det.class_names), det.class_names[0])
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == ["12", "circle_bars"]


def test_class_names_argument_then_metadata_catalog(tmp_path):
    weights = random_weights(TINY, tmp_path / "w.pth")
    det = Detectron2Detector(str(TINY), str(weights), score_thresh=0.0)
    assert det.class_names[:3] == ["person", "bicycle", "car"]  # DATASETS.TEST coco_2017_val's thing_classes
    names = [f"c{i}" for i in range(80)]
    assert Detectron2Detector(str(TINY), str(weights), class_names=names).class_names == names
    with pytest.raises(UsageError, match="3 detector class names but MODEL.ROI_HEADS.NUM_CLASSES is 80"):
        Detectron2Detector(str(TINY), str(weights), class_names=["a", "b", "c"])


@pytest.mark.parametrize("input_format", ["BGR", "RGB"])
def test_detect_equals_default_predictor_per_image(tmp_path, input_format):
    """detect() runs DefaultPredictor's own preprocessing: the same boxes as predictor(bgr) for an image."""
    weights = random_weights(TINY, tmp_path / "w.pth")
    det = Detectron2Detector(str(TINY), str(weights), score_thresh=0.0, opts=["INPUT.FORMAT", input_format])
    rng = np.random.RandomState(0)
    records = [ImageRecord(f"{h}.png", rng.randint(0, 255, (h, w, 3)).astype(np.uint8))
               for h, w in ((120, 160), (150, 100))]
    assert len(det.detect(records)) == 2
    for r in records:  # one at a time: a batch pads its images to a common size, which moves random-weight boxes
        got = det.detect([r])[0]
        inst = det.predictor(np.ascontiguousarray(r.image[:, :, ::-1]))["instances"]
        assert len(inst) > 0
        np.testing.assert_allclose(got.boxes, inst.pred_boxes.tensor.numpy(), atol=1e-3)
        np.testing.assert_allclose(got.scores, inst.scores.numpy(), atol=1e-5)
    # the input the model got is DefaultPredictor's: resized to INPUT.MIN_SIZE_TEST, in INPUT.FORMAT, float CHW
    inp = det.model_input(records[0])
    assert tuple(inp["image"].shape) == (3, 128, 171) and inp["image"].dtype == torch.float32
    assert (inp["height"], inp["width"]) == (120, 160)
