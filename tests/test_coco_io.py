"""crop_classifier.coco_io: the one COCO reader. Its id rule, its category rule, malformed entries named,
one parse per file per process, and every reader (training samples, gt:, detections:, Detectron2
registration, trade-off benchmark) going through it."""
import json
import os

import numpy as np
import pytest

from crop_classifier import coco_io
from crop_classifier.coco_io import CocoFile, coco_id, load_coco

CATS = [{"id": 3, "name": "dog"}, {"id": 1, "name": "cat", "supercategory": "animal"}]


def _write(path, images=None, annotations=None, categories=None, **extra):
    data = {"images": images if images is not None else [{"id": 1, "file_name": "sub/a.jpg", "width": 64, "height": 48},
                                                          {"id": 2, "file_name": "b.jpg"}],
            "annotations": annotations if annotations is not None else
            [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 12], "iscrowd": 0, "area": 120},
             {"id": 11, "image_id": 1, "category_id": 1, "bbox": [0.5, 1.25, 4, 8]},
             {"id": 12, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 1}],
            "categories": categories if categories is not None else CATS, **extra}
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(autouse=True)
def fresh_cache():
    coco_io.clear_cache()
    yield
    coco_io.clear_cache()


# ----------------------------------------------------------------------------------------- the id rule


@pytest.mark.parametrize("value, expected", [(3, 3), (0, 0), (3.0, 3), (-2, -2)])
def test_ids_are_integers_or_integral_numbers(value, expected):
    assert coco_id(value, "image_id", "f.json: entry 0") == expected and type(coco_id(value, "id", "")) is int


@pytest.mark.parametrize("value", ["3", "a", 3.5, True, None, [1], {"id": 1}, float("nan"), float("inf")])
def test_strings_and_other_values_are_not_ids(value):
    with pytest.raises(ValueError, match=r"f.json: entry 0: image_id must be an integer, got"):
        coco_id(value, "image_id", "f.json: entry 0")


def test_string_ids_are_malformed_entries_in_every_reader(tmp_path):
    """One rule everywhere: a numeric string id is neither matched nor silently converted."""
    from crop_classifier.data.coco import load_coco_samples
    from crop_classifier.detectors import DetectionsFile, GroundTruthBoxes

    images = [{"id": 1, "file_name": "a.jpg"}, {"id": "2", "file_name": "b.jpg"}]
    anns = [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]},
            {"id": 11, "image_id": "1", "category_id": 1, "bbox": [1, 1, 4, 4]},
            {"id": "12", "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]},
            {"id": 13, "image_id": 1.0, "category_id": 3.0, "bbox": [1, 1, 4, 4]}]  # integral numbers: fine
    p = _write(tmp_path / "ann.json", images=images, annotations=anns)
    f = load_coco(p)
    assert [im["id"] for im in f.images] == [1]
    assert f.annotations(1).ids.tolist() == [10, 13] and f.annotations(1).category_ids.tolist() == [1, 3]
    assert len(f.errors) == 3 and all(str(p) in e for e in f.errors)
    assert "images[1]: id must be an integer, got str '2'" in f.errors[0]
    assert "annotation id 11: image_id must be an integer, got str '1'" in f.errors[1]
    assert "annotations[2]: id must be an integer, got str '12'" in f.errors[2]
    with pytest.raises(ValueError, match="images\\[1\\]: id must be an integer, got str"):
        load_coco_samples(p, tmp_path)  # training is strict by default
    s = load_coco_samples(p, tmp_path, strict=False)
    assert [x[3] for x in s.samples] == [10, 13] and s.errors == f.errors and s.skipped["invalid"] == 2
    gt = GroundTruthBoxes(str(p))
    assert gt.errors == f.errors and len(gt.detect([_record("a.jpg")])[0]) == 2
    d = tmp_path / "d.json"
    d.write_text(json.dumps([{"image_id": "1", "category_id": 1, "bbox": [1, 1, 4, 4]},
                             {"image_id": 1, "category_id": "1", "bbox": [1, 1, 4, 4]},
                             {"image_id": 1.0, "category_id": 1, "bbox": [1, 1, 4, 4]}]))
    det = DetectionsFile(str(d), annotations=str(p))
    assert len(det.errors) == 2 and "entry 0: image_id must be an integer" in det.errors[0]
    assert "entry 1: category_id must be an integer" in det.errors[1]
    assert len(det.detect([_record("a.jpg")])[0]) == 1 and det.image_ids == {"a.jpg": 1}


def _record(name, h=48, w=64):
    from crop_classifier.structures import ImageRecord

    return ImageRecord(name, np.zeros((h, w, 3), np.uint8))


# ----------------------------------------------------------------------------------------- the category rule


def test_categories_ordered_by_id_whatever_the_file_order(tmp_path):
    f = load_coco(_write(tmp_path / "a.json"))
    assert f.class_names == ["cat", "dog"] and f.category_ids == [1, 3]
    assert f.categories == [{"id": 1, "name": "cat"}, {"id": 3, "name": "dog"}]
    assert f.category_index == {1: 0, 3: 1}


@pytest.mark.parametrize("cats, message", [
    ([{"id": 1, "name": "cat"}, {"id": 1, "name": "dog"}], "category id 1 appears twice"),
    ([{"id": 1, "name": "cat"}, {"id": 2, "name": "cat"}], "category name 'cat' appears twice"),
    ([{"id": 1, "name": ""}], "category id 1: name must be a non-empty string"),
    ([{"id": 1, "name": 5}], "category id 1: name must be a non-empty string"),
    ([{"id": "1", "name": "cat"}], r"categories\[0\]: id must be an integer"),
    ([{"name": "cat"}], r"categories\[0\]: missing key 'id'"),
    (["cat"], r"categories\[0\]: expected a JSON object"),
])
def test_bad_categories_are_an_error_for_the_whole_file(tmp_path, cats, message):
    """Categories define the class space: no entry of them is skipped, the file is refused, named."""
    p = _write(tmp_path / "a.json", annotations=[], categories=cats)
    with pytest.raises(ValueError, match=message) as info:
        load_coco(p)
    assert str(p) in str(info.value)


def test_detections_without_annotations_follow_the_same_category_rule(tmp_path):
    from crop_classifier.detectors import DetectionsFile

    p = tmp_path / "d.json"
    entry = {"file_name": "a.jpg", "bbox": [1, 1, 4, 4], "score": 0.5}
    p.write_text(json.dumps([{**entry, "category_id": 5, "category_name": "dog"},
                             {**entry, "category_id": 2, "category_name": "cat"}]))
    assert DetectionsFile(str(p)).class_names == ["cat", "dog"]  # by id, as an annotations file's
    p.write_text(json.dumps([{**entry, "category_id": 5, "category_name": "dog"},
                             {**entry, "category_id": 2, "category_name": "dog"}]))
    with pytest.raises(ValueError, match="category name 'dog' appears twice"):
        DetectionsFile(str(p))


# ----------------------------------------------------------------------------------------- entries


def test_boxes_images_and_malformed_entries(tmp_path):
    anns = [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 12]},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [1, 1, -4, 4]},
            {"id": 10, "image_id": 2, "category_id": 1, "bbox": [1, 1, 4, 4]},
            {"id": 14, "image_id": 1, "category_id": 1, "bbox": [0.5, 1.25, 4, 8], "iscrowd": 1},
            "junk"]
    images = [{"id": 1, "file_name": "sub/a.jpg"}, {"id": 2, "file_name": ""}, {"id": 1, "file_name": "c.jpg"}]
    p = _write(tmp_path / "a.json", images=images, annotations=anns)
    f = load_coco(p)
    a = f.annotations(1)
    assert a.boxes.tolist() == [[2, 3, 12, 15], [0.5, 1.25, 4.5, 9.25]] and a.boxes.dtype == np.float64
    assert a.xywh.tolist() == [[2, 3, 10, 12], [0.5, 1.25, 4, 8]]
    assert a.ids.tolist() == [10, 14] and a.iscrowd.tolist() == [False, True]
    assert f.annotations(1, include_crowd=False).ids.tolist() == [10] and len(f.annotations(99)) == 0
    assert f.images_by_key == {"a.jpg": f.image(1)} and f.image(2) is None
    expected = ["images[1]: file_name must be a non-empty string", "images[2]: image id 1 appears twice",
                "annotation id 11: bbox has a negative width or height",
                "annotation id 10: image_id 2 is not in 'images'", "annotations[4]: expected a JSON object"]
    assert len(f.errors) == len(expected) and f.num_bad_annotations == 3
    for e, want in zip(f.errors, expected):
        assert e.startswith(f"{p}: ") and want in e, (e, want)


def test_duplicate_annotation_ids_and_base_names(tmp_path):
    anns = [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]},
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 2, 4, 4]}]
    images = [{"id": 1, "file_name": "x/a.jpg"}, {"id": 2, "file_name": "y/a.jpg"}]
    f = load_coco(_write(tmp_path / "a.json", images=images, annotations=anns))
    assert f.annotations(1).boxes.tolist() == [[1, 1, 5, 5]]
    assert ["annotations[1]: annotation id 10 appears twice" in e for e in f.errors] == [True]
    # Full paths are distinct (training reads them), base names are not: matching inputs by name is ambiguous.
    with pytest.raises(ValueError, match=r"two images named a.jpg \(ids 1 and 2\)"):
        f.images_by_key


@pytest.mark.parametrize("text, exc, message", [
    ("{oops", ValueError, "not valid JSON"),
    ("[1, 2]", ValueError, "expected a JSON object"),
    ('{"images": []}', ValueError, "missing key 'categories'"),
    ('{"images": [], "categories": [], "annotations": {}}', ValueError, "'annotations' must be a list"),
])
def test_broken_files_are_one_error_naming_the_file(tmp_path, text, exc, message):
    p = tmp_path / "broken.json"
    p.write_text(text)
    with pytest.raises(exc, match=message) as info:
        load_coco(p)
    assert str(p) in str(info.value)
    with pytest.raises(FileNotFoundError, match="nothere.json: no such file"):
        load_coco(tmp_path / "nothere.json")


def test_image_info_files_have_no_annotations(tmp_path):
    p = tmp_path / "info.json"
    p.write_text(json.dumps({"images": [{"id": 4, "file_name": "a.jpg"}], "categories": CATS}))
    f = load_coco(p)
    assert not f.has_annotations and len(f.annotations(4)) == 0 and f.class_names == ["cat", "dog"]


# ----------------------------------------------------------------------------------------- pycocotools underneath


def test_coco_object_is_ready_for_cocoeval_and_quiet(tmp_path, capsys):
    from pycocotools.cocoeval import COCOeval

    anns = [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 12]},  # no iscrowd, no area
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "area": 50.0},
            {"id": 12, "image_id": 1, "category_id": "x", "bbox": [2, 3, 10, 12]}]  # malformed: not in the index
    f = load_coco(_write(tmp_path / "a.json", annotations=anns, info={"year": 2017}))
    assert capsys.readouterr().out == ""  # pycocotools' progress lines are swallowed
    gt = f.coco
    assert sorted(gt.getAnnIds()) == [10, 11] and gt.dataset["info"] == {"year": 2017}
    assert gt.anns[10]["iscrowd"] == 0 and gt.anns[10]["area"] == 120 and gt.anns[11]["area"] == 50.0
    assert gt.loadCats(1)[0]["supercategory"] == "animal"
    with __import__("contextlib").redirect_stdout(__import__("io").StringIO()):
        dt = gt.loadRes([{"image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 12], "score": 0.9},
                         {"image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "score": 0.8}])
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    assert ev.stats[0] == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------- parsed once


def test_each_file_is_parsed_once_per_process_by_every_reader(tmp_path, monkeypatch):
    from crop_classifier.data.coco import load_coco_samples
    from crop_classifier.detectors import DetectionsFile, GroundTruthBoxes

    p = _write(tmp_path / "ann.json")
    parsed = []
    real = coco_io.read_json
    monkeypatch.setattr(coco_io, "read_json", lambda path, what="": parsed.append(str(path)) or real(path, what))
    f = load_coco(p)
    d = tmp_path / "d.json"
    d.write_text(json.dumps([{"image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4]}]))
    gt = GroundTruthBoxes(str(p))
    DetectionsFile(str(d), annotations=str(p))
    load_coco_samples(p, tmp_path)
    load_coco(os.path.relpath(p))  # another spelling of the same file
    assert parsed == [str(p)] and gt.coco is f and load_coco(p) is f
    # A file changed on disk is read again.
    _write(p, categories=[{"id": 1, "name": "cat"}, {"id": 3, "name": "wolf"}])
    os.utime(p, ns=(os.stat(p).st_atime_ns, os.stat(p).st_mtime_ns + 10**9))
    assert load_coco(p).class_names == ["cat", "wolf"] and len(parsed) == 2
    # Already parsed files can be handed over as they are.
    assert GroundTruthBoxes(f).coco is f and DetectionsFile(str(d), annotations=f).class_names == ["cat", "dog"]
    assert len(parsed) == 2


def test_a_broken_file_is_not_cached(tmp_path):
    p = tmp_path / "a.json"
    p.write_text("{oops")
    with pytest.raises(ValueError):
        load_coco(p)
    _write(p)
    assert isinstance(load_coco(p), CocoFile)


def test_trade_off_records_and_d2_registration_read_through_coco_io(tmp_path):
    from benchmarks.tradeoff import coco_records

    anns = [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [2, 3, 10, 12]},
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [1, 1, 0.5, 8]},  # under 1 px wide: left out
            {"id": 12, "image_id": 2, "category_id": 1, "bbox": [1, 1, 5, 5], "iscrowd": 1}]
    p = _write(tmp_path / "a.json", annotations=anns)
    records, cats = coco_records(p, tmp_path)
    assert cats == {1: "cat", 3: "dog"} and len(records) == 1
    path, boxes, ids = records[0]
    assert path == tmp_path / "sub/a.jpg" and boxes.tolist() == [[2, 3, 12, 15]] and ids.tolist() == [3]
    p2 = _write(tmp_path / "b.json", annotations=[{"id": 1, "image_id": "1", "category_id": 1, "bbox": [1, 1, 4, 4]}])
    with pytest.raises(ValueError, match="image_id must be an integer"):
        coco_records(p2, tmp_path)


@pytest.mark.detectron2
def test_d2_registration_uses_the_category_rule(tmp_path):
    pytest.importorskip("detectron2")
    from detectron2.data import DatasetCatalog

    from crop_classifier.d2.train import register_coco

    p = _write(tmp_path / "a.json")
    assert register_coco("coco_io_test_a", str(p)) == ["cat", "dog"]
    bad = _write(tmp_path / "b.json", categories=[{"id": 1, "name": "cat"}, {"id": 2, "name": "cat"}])
    with pytest.raises(ValueError, match="category name 'cat' appears twice"):
        register_coco("coco_io_test_b", str(bad))
    malformed = _write(tmp_path / "c.json", annotations=[{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1]}])
    with pytest.raises(ValueError, match="coco_io_test_c: .*c.json: skipped 1 malformed entry: .*annotation id 1: bbox"):
        register_coco("coco_io_test_c", str(malformed))
    assert "coco_io_test_c" not in DatasetCatalog.list()


def test_coco128_through_the_reader(coco128):
    ann = coco128 / "annotations" / "instances_train2017.json"
    data = json.loads(ann.read_text())
    f = load_coco(ann)
    assert f.errors == [] and len(f.images) == len(data["images"])
    assert f.class_names == [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    a = data["annotations"][0]
    got = f.annotations(a["image_id"])
    k = got.ids.tolist().index(a["id"])
    x, y, w, h = a["bbox"]
    assert got.boxes[k].tolist() == [x, y, x + w, y + h]
    assert sum(len(f.annotations(im["id"])) for im in f.images) == len(data["annotations"])
