"""Annotation and detection JSON from elsewhere: malformed files are one clear error; malformed entries
(missing keys, wrong types, unknown image ids / file names / category ids) are each named, and every
good entry is still used."""
import json
import math

import pytest

from crop_classifier.data.coco import load_coco_samples

GOOD_ANN = {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12], "iscrowd": 0}
# (entry, what its error must say)
BAD_ANNS = [
    ({"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5]}, r"annotations\[\d\]: missing key 'id'"),
    ({"id": 11, "category_id": 1, "bbox": [1, 1, 5, 5]}, "annotation id 11: missing key 'image_id'"),
    ({"id": 12, "image_id": 1, "bbox": [1, 1, 5, 5]}, "annotation id 12: missing key 'category_id'"),
    ({"id": 13, "image_id": 1, "category_id": 1}, "annotation id 13: missing key 'bbox'"),
    ({"id": 14, "image_id": 99, "category_id": 1, "bbox": [1, 1, 5, 5]}, "annotation id 14: image_id 99 is not in"),
    ({"id": 15, "image_id": 1, "category_id": 42, "bbox": [1, 1, 5, 5]}, "annotation id 15: category_id 42 is not in"),
    ({"id": 16, "image_id": [1], "category_id": 1, "bbox": [1, 1, 5, 5]}, "annotation id 16: image_id must be an integer"),
    ({"id": 17, "image_id": 1, "category_id": {"x": 1}, "bbox": [1, 1, 5, 5]}, "annotation id 17: category_id must be"),
    ({"id": 18, "image_id": 1, "category_id": 1, "bbox": "1,1,5,5"}, "annotation id 18: bbox must be 4 finite"),
    ({"id": 19, "image_id": 1, "category_id": 1, "bbox": [1, 1, float("nan"), 5]}, "annotation id 19: bbox must be 4 finite"),
    ({"id": 20, "image_id": 1, "category_id": 1, "bbox": [1, 1, True, 5]}, "annotation id 20: bbox must be 4 finite"),
    ({"id": 21, "image_id": 1, "category_id": 1, "bbox": [1, 1, -5, 5]}, "annotation id 21: bbox has a negative"),
    ("not an object", r"annotations\[\d+\]: expected a JSON object, got str"),
]


def _coco(tmp_path, anns, images=None, name="ann.json"):
    data = {
        "images": images or [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
                             {"id": 2, "file_name": "b.jpg", "width": 64, "height": 48}],
        "annotations": anns,
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    p = tmp_path / name
    p.write_text(json.dumps(data))  # json writes NaN as a bare token, as some exporters do
    return p


@pytest.mark.parametrize("entry,message", BAD_ANNS)
def test_coco_bad_annotation_strict_names_the_entry(tmp_path, entry, message):
    with pytest.raises(ValueError, match=message):
        load_coco_samples(_coco(tmp_path, [GOOD_ANN, entry]), tmp_path)


def test_coco_bad_entries_skipped_and_each_named(tmp_path, caplog):
    good2 = {**GOOD_ANN, "id": 2, "image_id": 2, "category_id": 2}
    anns = [GOOD_ANN] + [e for e, _ in BAD_ANNS] + [good2]
    images = [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
              {"id": 2, "file_name": "b.jpg"},
              {"file_name": "c.jpg"},  # no id
              {"id": 3, "file_name": 7},  # wrong type
              {"id": 4, "file_name": "d.jpg", "width": "wide", "height": 48},
              {"id": 1, "file_name": "again.jpg"}]  # duplicate id
    s = load_coco_samples(_coco(tmp_path, anns, images), tmp_path, strict=False)
    assert [x[3] for x in s.samples] == [1, 2] and s.labels.tolist() == [0, 1]  # every good entry kept
    assert s.skipped["invalid"] == len(BAD_ANNS)
    image_errors = ["images[2]: missing key 'id'", "images[3]: file_name must be", "images[4]: width must be",
                    "image id 1 appears twice"]
    assert len(s.errors) == len(BAD_ANNS) + len(image_errors)
    import re

    for expected in [m for _, m in BAD_ANNS] + [re.escape(m) for m in image_errors]:
        assert sum(bool(re.search(expected, e)) for e in s.errors) == 1, expected
    assert all(str(tmp_path / "ann.json") in e for e in s.errors)
    assert "skipped" in caplog.text and "malformed" in caplog.text


@pytest.mark.parametrize("text,message", [
    ("{not json", "not valid JSON"),
    ("", "not valid JSON"),
    ("[1, 2, 3]", "expected a JSON object"),
    ('{"images": [], "categories": []}', "missing key 'annotations'"),
    ('{"images": {}, "annotations": [], "categories": []}', "'images' must be a list"),
    ('{"images": [], "annotations": [], "categories": [{"id": [3], "name": "x"}]}', r"categories\[0\]: id must be"),
])
def test_coco_broken_files_are_one_clear_error(tmp_path, text, message):
    p = tmp_path / "broken.json"
    p.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        load_coco_samples(p, tmp_path, strict=False)
    assert str(p) in str(info.value)


# --------------------------------------------------------------------------- detections files / ground truth
# (crop_classifier/detectors: a foreign detector's COCO results as the first stage)

GOOD_DET = {"image_id": 1, "category_id": 1, "bbox": [2, 3, 10, 12], "score": 0.9}
BAD_DETS = [
    ({"image_id": 1, "category_id": 1, "score": 0.5}, "entry 1: .*bbox"),
    ({"image_id": 1, "bbox": [1, 1, 5, 5], "score": 0.5}, "entry 2: .*category_id"),
    ({"image_id": 77, "category_id": 1, "bbox": [1, 1, 5, 5]}, "entry 3: .*image_id 77"),
    ({"image_id": 1, "category_id": 9, "bbox": [1, 1, 5, 5]}, "entry 4: category_id 9"),
    ({"image_id": 1, "category_id": 1, "bbox": [1, "x", 5, 5]}, "entry 5: .*bbox"),
    ({"image_id": 1, "category_id": 1, "bbox": [1, 1, float("inf"), 5]}, "entry 6: .*bbox"),
    ({"image_id": 1, "category_id": 1, "bbox": [1, 1, 5, 5], "score": "high"}, "entry 7: .*score"),
    ({"image_id": 1, "category_id": "cat", "bbox": [1, 1, 5, 5]}, "entry 8: .*category_id"),
    ({"file_name": "nowhere/zzz.jpg", "category_id": 1, "bbox": [1, 1, 5, 5]}, None),  # unknown file: no error, just unused
    (["not", "a", "dict"], "entry 10"),
]


def _dets(tmp_path, entries):
    p = tmp_path / "dets.json"
    p.write_text(json.dumps(entries))
    return p


def test_detections_file_bad_entries_named_rest_used(tmp_path):
    from crop_classifier.detectors import DetectionsFile
    from crop_classifier.detectors.base import ImageRecord

    import numpy as np

    ann = _coco(tmp_path, [GOOD_ANN])
    entries = [GOOD_DET] + [e for e, _ in BAD_DETS] + [{**GOOD_DET, "image_id": 2, "score": 0.4}]
    det = DetectionsFile(str(_dets(tmp_path, entries)), annotations=str(ann))
    import re

    errors = getattr(det, "errors", None)
    assert errors is not None, "DetectionsFile must record per-entry errors instead of stopping at the first"
    for _, message in BAD_DETS:
        if message:
            assert sum(bool(re.search(message, e)) for e in errors) == 1, (message, errors)
    assert all("dets.json" in e for e in errors)
    img = np.zeros((48, 64, 3), np.uint8)
    a, b = det.detect([ImageRecord("x/a.jpg", img), ImageRecord("x/b.jpg", img)])
    assert len(a) == 1 and a.boxes.tolist() == [[2, 3, 12, 15]] and math.isclose(float(a.scores[0]), 0.9, rel_tol=1e-6)
    assert len(b) == 1 and math.isclose(float(b.scores[0]), 0.4, rel_tol=1e-6)


@pytest.mark.parametrize("text,message", [("{oops", "not valid JSON"), ('{"a": 1}', "expected a COCO results list"),
                                          ("", "not valid JSON")])
def test_detections_file_broken_file_is_one_clear_error(tmp_path, text, message):
    from crop_classifier.detectors import DetectionsFile

    p = tmp_path / "dets.json"
    p.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        DetectionsFile(str(p), annotations=str(_coco(tmp_path, [GOOD_ANN])))
    assert str(p) in str(info.value)


def test_ground_truth_bad_entries_named_rest_used(tmp_path):
    from crop_classifier.detectors import GroundTruthBoxes
    from crop_classifier.detectors.base import ImageRecord

    import numpy as np

    anns = [GOOD_ANN] + [e for e, _ in BAD_ANNS if isinstance(e, dict) and "id" in e]
    gt = GroundTruthBoxes(str(_coco(tmp_path, anns)))
    errors = getattr(gt, "errors", None)
    assert errors is not None, "GroundTruthBoxes must record per-entry errors instead of stopping at the first"
    assert len(errors) == len(anns) - 1 and all("annotation id" in e for e in errors), errors
    (d,) = gt.detect([ImageRecord("a.jpg", np.zeros((48, 64, 3), np.uint8))])
    assert d.boxes.tolist() == [[2, 3, 12, 15]]
