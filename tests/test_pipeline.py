"""The detector-agnostic second stage: class map, fusion modes, gates, chunking, crops at full resolution."""
import math

import pytest
import torch

from crop_classifier.models import build_classifier
from crop_classifier.second_stage import ClassMap, SecondStage, fuse, parse_class_map
from classifier_helpers import COLOURS, MeanColourNet, colour_image, inference_form


# --------------------------------------------------------------------------------------------- class map
def test_class_map_default_is_same_name_and_output_ids_are_classifier_first():
    m = ClassMap(["person", "car", "dog"], ["car", "truck"])
    assert m.describe() == {"car": ["car"]}
    assert m.mapped.tolist() == [False, True, False]
    # classifier classes first (ids 0..K-1), then detector classes the classifier lacks, in detector order
    assert m.output_class_names == ["car", "truck", "person", "dog"]
    assert m.det_to_out.tolist() == [2, 0, 3]


def test_class_map_coarse_to_fine_star_and_parsing():
    spec = "vehicle=car,bus,truck; animal=*"
    assert parse_class_map(spec) == {"vehicle": ["car", "bus", "truck"], "animal": ["*"]}
    assert parse_class_map([["vehicle", "car,bus"]]) == {"vehicle": ["car", "bus"]}
    m = ClassMap(["vehicle", "animal", "person"], ["car", "bus", "truck", "cat"], spec)
    assert m.targets("vehicle") == ["car", "bus", "truck"]
    assert m.targets("animal") == ["car", "bus", "truck", "cat"]
    assert m.targets("person") == []
    assert m.output_class_names == ["car", "bus", "truck", "cat", "vehicle", "animal", "person"]
    # "*" as a key: the entry of every detector class without its own
    m = ClassMap(["car", "bus", "person"], ["car", "bus"], "*=*; person=bus")
    assert m.describe() == {"car": ["car", "bus"], "bus": ["car", "bus"], "person": ["bus"]}


@pytest.mark.parametrize(
    "det, cls, spec, match",
    [
        (["vehicle"], ["car"], {"truck": ["car"]}, "detector does not have"),
        (["vehicle"], ["car"], {"vehicle": ["plane"]}, "no class 'plane'"),
        (["a", "a"], ["car"], None, "repeated"),
        (["vehicle"], ["car"], "vehicle", "DETECTOR_CLASS=CLASS"),
    ],
)
def test_class_map_errors_name_the_problem(det, cls, spec, match):
    with pytest.raises(ValueError, match=match):
        ClassMap(det, cls, spec)


# --------------------------------------------------------------------------------------------- fusion
def _fuse_case(mode):
    cmap = ClassMap(["vehicle", "person"], ["car", "bus", "person", "cat"], {"vehicle": ["car", "bus"]})
    det_classes = torch.tensor([0, 0, 1, 1, 0])
    det_scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    probs = torch.tensor([
        [0.1, 0.6, 0.2, 0.1],  # vehicle, classifier says bus
        [0.1, 0.2, 0.3, 0.4],  # vehicle, classifier's overall top is cat (outside the set); within it: bus
        [0.1, 0.1, 0.7, 0.1],  # person, agrees
        [0.5, 0.1, 0.2, 0.2],  # person, classifier says car
        [0.0, 0.0, 0.0, 0.0],  # not classified (gated)
    ])
    classified = torch.tensor([True, True, True, True, False])
    return fuse(det_classes, det_scores, probs, classified, cmap, mode), cmap


def test_fuse_replace_decides_within_the_mapped_set():
    (classes, scores, keep, cls_scores), cmap = _fuse_case("replace")
    names = [cmap.output_class_names[i] for i in classes]
    assert names == ["bus", "bus", "person", "person", "vehicle"]  # person's set is {person}: stays person
    assert torch.allclose(scores, torch.tensor([0.9 * 0.6, 0.8 * 0.2, 0.7 * 0.7, 0.6 * 0.2, 0.5]))
    assert keep.all()
    assert math.isnan(cls_scores[4]) and abs(cls_scores[0] - 0.6) < 1e-6


def test_fuse_rescore_keeps_detector_class_and_multiplies_by_set_probability():
    (classes, scores, keep, _), cmap = _fuse_case("rescore")
    assert [cmap.output_class_names[i] for i in classes] == ["vehicle", "vehicle", "person", "person", "vehicle"]
    assert torch.allclose(scores, torch.tensor([0.9 * 0.7, 0.8 * 0.3, 0.7 * 0.7, 0.6 * 0.2, 0.5]))
    assert keep.all()


def test_fuse_filter_drops_disagreements_like_yolov5():
    (classes, scores, keep, _), cmap = _fuse_case("filter")
    assert keep.tolist() == [True, False, True, False, True]  # unclassified boxes are never dropped
    assert torch.allclose(scores, torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]))


def test_fuse_rejects_unknown_mode():
    with pytest.raises(ValueError, match="unknown fusion mode"):
        _fuse_case("vote")


# --------------------------------------------------------------------------------------------- the stage
def _colour_stage(**kw):
    kw.setdefault("class_map", {"thing": ["red", "green", "blue"]})
    return SecondStage(inference_form(MeanColourNet(), COLOURS, 16), ["thing", "other"], **kw)


def test_second_stage_classifies_each_crop_from_its_own_box():
    img, boxes, colour = colour_image()
    stage = _colour_stage()
    r = stage.run([img], [boxes], [torch.zeros(3, dtype=torch.long)], [torch.tensor([0.9, 0.8, 0.7])]).detections[0]
    assert len(r) == 3
    order = r.index.tolist()
    assert [stage.output_class_names[c] for c in r.classes] == [COLOURS[colour[i]] for i in order]
    assert r.classified.all() and (r.det_classes == 0).all()
    assert torch.allclose(r.det_scores, torch.tensor([0.9, 0.8, 0.7])[order])
    assert torch.allclose(r.scores, r.det_scores * r.cls_scores)
    assert torch.allclose(r.cls_probs.sum(1), torch.ones(3))
    assert stage.changed(r).all()


def test_chunking_does_not_change_results():
    img, boxes, _ = colour_image()
    torch.manual_seed(0)
    clf = build_classifier("v3_79", 3, width=0.0625, aux_logits=False)
    args = ([img, img.flip(2)], [boxes, boxes[:2]], [torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.long)],
            [torch.rand(3), torch.rand(2)])
    meta = {"arch": "v3_79", "class_names": COLOURS, "input_size": 79}
    kw = dict(class_map={"thing": ["*"]})
    one = SecondStage.from_model(clf, meta, ["thing", "other"], crops_per_forward=1, **kw).run(*args).detections
    big = SecondStage.from_model(clf, meta, ["thing", "other"], crops_per_forward=64, **kw).run(*args).detections
    for a, b in zip(one, big):
        assert torch.equal(a.index, b.index)
        assert torch.allclose(a.cls_probs, b.cls_probs, atol=1e-5)
    assert one[0].cls_probs.shape == (3, 3) and len(one[1]) == 2


def test_size_gates_and_class_selection_pass_boxes_through_untouched():
    img, boxes, _ = colour_image()
    big = torch.tensor([[0.0, 0, 100, 100]])
    all_boxes = torch.cat([boxes, big])
    classes = torch.tensor([0, 0, 1, 0])  # third box is an unmapped detector class
    stage = _colour_stage(min_box_size=15, max_box_size=60)
    r = stage.run([img], [all_boxes], [classes], [torch.tensor([0.9, 0.8, 0.7, 0.6])]).detections[0]
    by_src = {int(i): k for k, i in enumerate(r.index)}
    assert r.classified[by_src[0]] and r.classified[by_src[1]]
    assert not r.classified[by_src[2]] and not r.classified[by_src[3]]  # unmapped class; box over max_size
    assert stage.output_class_names[r.classes[by_src[2]]] == "other"
    assert stage.output_class_names[r.classes[by_src[3]]] == "thing"
    assert abs(float(r.scores[by_src[3]]) - 0.6) < 1e-6 and math.isnan(float(r.cls_scores[by_src[3]]))
    assert float(r.cls_probs[by_src[3]].abs().sum()) == 0
    # every box too small: nothing is classified
    tiny = _colour_stage(min_box_size=50).run([img], [boxes], [torch.zeros(3, dtype=torch.long)], [torch.ones(3)]).detections[0]
    assert not tiny.classified.any()
    with pytest.raises(ValueError, match="not detector classes"):
        _colour_stage(reclassify=["nope"])
    with pytest.raises(ValueError, match="map to no classifier class"):
        _colour_stage(reclassify=["other"])


def test_zero_detections_and_empty_batches():
    img, _, _ = colour_image()
    stage = _colour_stage()
    r = stage.run([img, img], [torch.zeros(0, 4)] * 2, [torch.zeros(0, dtype=torch.long)] * 2, [torch.zeros(0)] * 2).detections
    assert [len(x) for x in r] == [0, 0]
    assert r[0].cls_probs.shape == (0, 3)
    assert stage.run([], [], [], []).detections == []


def test_replace_merges_duplicate_hypotheses_with_nms():
    img, boxes, _ = colour_image()
    # The detector proposes the red square twice, as "thing" and as "thing" again with a lower score
    # (e.g. two of its fine classes): after replace both are "red", and NMS keeps one.
    b = torch.cat([boxes[:1], boxes[:1] + 1])
    stage = _colour_stage()
    r = stage.run([img], [b], [torch.zeros(2, dtype=torch.long)], [torch.tensor([0.9, 0.5])]).detections[0]
    assert len(r) == 1 and r.index.tolist() == [0]
    r = _colour_stage(nms_thresh=0).run([img], [b], [torch.zeros(2, dtype=torch.long)], [torch.tensor([0.9, 0.5])]).detections[0]
    assert len(r) == 2


def test_bad_input_is_a_clear_error():
    img, boxes, _ = colour_image()
    stage = _colour_stage()
    with pytest.raises(ValueError, match="outside the 2 detector classes"):
        stage.run([img], [boxes], [torch.tensor([0, 1, 5])], [torch.ones(3)])
    with pytest.raises(ValueError, match=r"boxes must be \[N, 4\]"):
        stage.run([img], [boxes[:, :3]], [torch.zeros(3, dtype=torch.long)], [torch.ones(3)])
    with pytest.raises(ValueError, match="image 0"):
        stage.run([img[:1]], [boxes], [torch.zeros(3, dtype=torch.long)], [torch.ones(3)])


def test_loaded_checkpoint_gives_classes_crop_and_size_from_meta(tmp_path):
    from crop_classifier import load_classifier
    from crop_classifier.models import model_meta, save_checkpoint

    torch.manual_seed(0)
    clf = build_classifier("v3_79", 3, width=0.0625, aux_logits=False)
    path = save_checkpoint(tmp_path / "c.pth", clf, model_meta(clf, "v3_79", COLOURS, context=0.25, mode="letterbox"))
    stage = SecondStage(load_classifier(path, "torch", device="cpu", expected_meta={"arch": "v3_79"}), ["thing"],
                        class_map={"thing": ["*"]})
    assert stage.classifier_classes == COLOURS and stage.crop.size == 79
    assert stage.crop.context == 0.25 and stage.crop.mode == "letterbox"
    assert not any(p.requires_grad for p in stage.classifier.parameters())
    from crop_classifier.errors import CheckpointError

    with pytest.raises(CheckpointError, match="v3_151"):
        load_classifier(path, "torch", device="cpu", expected_meta={"arch": "v3_151"})
