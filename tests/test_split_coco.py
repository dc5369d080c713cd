"""tools/split_coco.py: held-out whole images, by the resolution trade-off's rule."""
import json
from pathlib import Path

import pytest

from crop_classifier.coco_io import split_held_out
from data_paths import COCO128
from tool_loader import load_tool


def _dataset():
    images = [{"id": i, "file_name": f"{i}.jpg", "width": 64, "height": 64} for i in (7, 3, 5, 1, 9, 2)]
    anns = [{"id": 10 + i, "image_id": i, "category_id": 1, "bbox": [0, 0, 8, 8], "iscrowd": 0} for i in (1, 3, 5, 7, 9)]
    anns[1]["iscrowd"] = 1  # image 3's only box is a crowd: it is not counted
    return {"info": {"x": 1}, "categories": [{"id": 1, "name": "a"}], "images": images, "annotations": anns}


def test_every_kth_boxed_image_by_id_is_held_out_whole():
    train, test = split_held_out(_dataset(), 2)
    # Boxed images by id: 1, 5, 7, 9 -> the 2nd and 4th (5, 9) are held out; 2 (no box) and 3 (crowd only) train.
    assert sorted(im["id"] for im in test["images"]) == [5, 9]
    assert sorted(im["id"] for im in train["images"]) == [1, 2, 3, 7]
    assert {a["image_id"] for a in test["annotations"]} == {5, 9}
    assert {a["image_id"] for a in train["annotations"]} == {1, 3, 7}
    assert train["categories"] == test["categories"] == _dataset()["categories"] and test["info"] == {"x": 1}


@pytest.mark.skipif(not (COCO128 / "annotations" / "instances_train2017.json").is_file(), reason="no coco128")
def test_coco128_split_is_the_tradeoffs(tmp_path):
    from benchmarks.tradeoff import dataset_records as tradeoff_dataset

    ann = COCO128 / "annotations" / "instances_train2017.json"
    assert load_tool("split_coco").main([str(ann), "--output-dir", str(tmp_path)]) == 0
    test = json.loads((tmp_path / "test.json").read_text())
    train = json.loads((tmp_path / "train.json").read_text())
    _, held, _ = tradeoff_dataset("coco128", tmp_path, synthetic_train=0, synthetic_test=0, image_size=0,
                                  coco_test_fraction=0.25, seed=0, coco128=COCO128)
    assert sorted(im["file_name"] for im in test["images"]) == sorted(Path(p).name for p, _, _ in held)
    assert len(train["images"]) + len(test["images"]) == len(json.loads(ann.read_text())["images"])


def test_usage_errors_are_one_line(tmp_path, capsys):
    tool = load_tool("split_coco")
    assert tool.main([str(tmp_path / "absent.json"), "--output-dir", str(tmp_path)]) == 2
    assert tool.main([str(tmp_path / "absent.json"), "--output-dir", str(tmp_path), "--every", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "absent.json: no such file" in err[0] and "--every" in err[1]
