"""tools/quantize.py's held-out comparison uses tools/evaluate.py's crops: with --config-file, its
MIN_BOX_SIZE_TEST applies to --eval-dataset as to DATASETS.TEST."""
import pytest
from tool_loader import load_tool

from crop_classifier.config import load_tool_config
from crop_classifier.engine.data import load_datasets
from data_paths import COCO128

ANN = COCO128 / "annotations" / "instances_train2017.json"
pytestmark = pytest.mark.skipif(not ANN.is_file(), reason="coco128 (shared data) not present")
quantize = load_tool("quantize")


def test_eval_dataset_takes_the_configs_min_box_size_test(tmp_path):
    coco = f"coco:{ANN}:{COCO128 / 'images'}"
    config = tmp_path / "c.yaml"
    config.write_text(f"DATASETS:\n  TEST: [\"{coco}\"]\n  MIN_BOX_SIZE_TEST: 32.0\n  MIN_BOX_SIZE_TRAIN: 4.0\n")
    base = ["--weights", "w.pth", "--output", "o.pth", "--config-file", str(config)]
    names, min_size = quantize.eval_datasets(quantize.parse_args(base + ["--eval-dataset", coco]))
    assert (names, min_size) == ([coco], 32.0)
    assert quantize.eval_datasets(quantize.parse_args(base + ["--eval"])) == ([coco], 32.0)
    cfg = load_tool_config(str(config), [], need_imagenet_weights=False)
    as_evaluate = len(load_datasets(cfg.DATASETS.TEST, min_size=cfg.DATASETS.MIN_BOX_SIZE_TEST)[0])
    assert len(load_datasets(names, min_size=min_size)[0]) == as_evaluate < len(load_datasets([coco])[0])
    # no config: nothing to follow, every box (what evaluate.py does with the defaults)
    plain = quantize.parse_args(["--weights", "w.pth", "--output", "o.pth", "--eval-dataset", coco])
    assert quantize.eval_datasets(plain) == ([coco], 0.0)
    assert quantize.eval_datasets(quantize.parse_args(["--weights", "w", "--output", "o.pth"])) == (None, 0.0)
