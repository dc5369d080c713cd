"""COCO box mAP summaries: the true/false positive counts at the first stage's score threshold."""
import contextlib
import io

import pytest

from pycocotools.coco import COCO

from crop_classifier.inference.coco_results import MATCH_SCORE, background_ceiling, coco_box_map


def _gt():
    gt = COCO()
    gt.dataset = {
        "images": [{"id": 1, "width": 200, "height": 200}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "area": 1600, "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "bbox": [100, 100, 50, 50], "area": 2500, "iscrowd": 0},
        ],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
    return gt


def test_matches_count_true_and_false_positives_above_the_score():
    res = [
        {"image_id": 1, "category_id": 1, "bbox": [11, 10, 40, 40], "score": 0.9},  # true positive
        {"image_id": 1, "category_id": 1, "bbox": [100, 100, 50, 50], "score": 0.6},  # right box, wrong class
        {"image_id": 1, "category_id": 2, "bbox": [102, 101, 50, 50], "score": MATCH_SCORE / 2},  # below the score
    ]
    m = coco_box_map(_gt(), res, [1])["matches"]
    assert m == {"score": MATCH_SCORE, "iou": 0.5, "tp": 1, "fp": 1, "fn": 1}
    res[2]["score"] = 0.5
    assert coco_box_map(_gt(), res, [1])["matches"] == {"score": MATCH_SCORE, "iou": 0.5, "tp": 2, "fp": 1, "fn": 0}


def test_background_ceiling_removes_only_boxes_on_no_object():
    gt = _gt()
    res = [
        {"image_id": 1, "category_id": 1, "bbox": [10, 10, 40, 40], "score": 0.5},  # true positive
        {"image_id": 1, "category_id": 2, "bbox": [10, 10, 40, 40], "score": 0.9},  # on an object, wrong class: kept
        {"image_id": 1, "category_id": 2, "bbox": [150, 0, 40, 40], "score": 0.95},  # on clutter: removed
        {"image_id": 1, "category_id": 2, "bbox": [100, 100, 50, 50], "score": 0.3},  # true positive
    ]
    ceil = background_ceiling(gt, res, [1])
    assert ceil["removed"] == 1 and ceil["iou"] == 0.5
    as_is = coco_box_map(gt, res, [1])["AP"]
    # Class b's true positive ranked third (precision 1/3), second once the clutter box is gone (1/2): the
    # wrong-class box on object a stays, which is a classifier's error, not a background one. Class a: 1.
    assert as_is == pytest.approx((1 + 1 / 3) / 2, abs=0.01) and ceil["AP"] == pytest.approx((1 + 1 / 2) / 2, abs=0.01)
    # Nothing on clutter: the ceiling is the AP itself.
    assert background_ceiling(gt, [res[0], res[3]], [1])["AP"] == coco_box_map(gt, [res[0], res[3]], [1])["AP"]
