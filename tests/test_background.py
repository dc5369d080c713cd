"""The optional background class: negative training boxes, the config key, the checkpoint meta."""
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from crop_classifier.config import load_config
from crop_classifier.data import (NEGATIVE_ANN_ID, CropDataset, add_negative_samples, generate_scenes,
                                  load_coco_samples, random_negative_boxes)
from crop_classifier.structures import BACKGROUND_CLASS, ClassifierMeta


def test_negative_boxes_overlap_no_object_and_stay_inside():
    rng = np.random.default_rng(0)
    objects = np.array([[10, 10, 60, 60], [100, 40, 180, 120], [30, 150, 90, 190]], np.float32)
    neg = random_negative_boxes((200, 240), objects, 50, 0.3, rng)
    assert neg.shape == (50, 4)
    assert (neg[:, 0] >= 0).all() and (neg[:, 1] >= 0).all() and (neg[:, 2] <= 240).all() and (neg[:, 3] <= 200).all()
    assert (neg[:, 2] > neg[:, 0]).all() and (neg[:, 3] > neg[:, 1]).all()
    assert box_iou(torch.from_numpy(neg), torch.from_numpy(objects)).max() < 0.3
    # Deterministic in the generator; other draws differ.
    again = random_negative_boxes((200, 240), objects, 50, 0.3, np.random.default_rng(0))
    assert np.array_equal(neg, again)
    assert not np.array_equal(neg, random_negative_boxes((200, 240), objects, 50, 0.3, np.random.default_rng(1)))


def test_negative_boxes_when_objects_cover_the_image_take_the_least_overlap():
    objects = np.array([[0, 0, 100, 100]], np.float32)
    neg = random_negative_boxes((100, 100), objects, 4, 0.3, np.random.default_rng(0))
    assert neg.shape == (4, 4) and np.isfinite(neg).all()


def test_negative_placeholders_follow_the_ratio_per_image():
    box = np.zeros(4, np.float32)
    samples = [("a.jpg", box, 0, 1), ("b.jpg", box, 1, 2), ("b.jpg", box, 1, 3), ("c.jpg", box, 0, 4)]
    out = add_negative_samples(samples, 0.5, 2)
    neg = out[len(samples):]
    assert out[:len(samples)] == samples and len(neg) == 2
    assert all(s[2] == 2 and s[3] == NEGATIVE_ANN_ID and np.isnan(s[1]).all() for s in neg)
    assert add_negative_samples(samples, 0.0, 2) == samples
    with pytest.raises(ValueError, match="ratio"):
        add_negative_samples(samples, -1, 2)


def test_dataset_crops_negatives_anew_each_epoch(tmp_path):
    ann = generate_scenes(tmp_path, 2, seed=0, image_size=256)
    s = load_coco_samples(ann, ann.parent)
    K = len(s.class_names)
    samples = add_negative_samples(s.samples, 1.0, K)
    ds = CropDataset(samples, 32, train=True, jitter_iou=0.7)
    neg_idx = [i for i, x in enumerate(samples) if x[3] == NEGATIVE_ANN_ID]
    idx = list(range(len(s))) + neg_idx
    torch.manual_seed(0)
    x1, y1 = ds.__getitems__(idx)
    assert torch.isfinite(x1).all() and y1.tolist() == s.labels.tolist() + [K] * len(neg_idx)
    torch.manual_seed(1)
    x2, _ = CropDataset(samples, 32, train=True, jitter_iou=0.7).__getitems__(idx)
    assert not torch.equal(x1[len(s):], x2[len(s):])  # other negatives in another epoch
    torch.manual_seed(0)
    x3, _ = CropDataset(samples, 32, train=True, jitter_iou=0.7).__getitems__(idx)
    assert torch.equal(x1, x3)  # the same seed repeats
    # The first image's object crops are those of a dataset without negatives (its jitter draws come first).
    torch.manual_seed(0)
    x0, _ = CropDataset(s, 32, train=True, jitter_iou=0.7).__getitems__(list(range(len(s))))
    first = int((s.image_index == 0).sum())
    assert torch.equal(x0[:first], x1[:first])


def test_config_keys_are_checked():
    base = ["DATASETS.TRAIN", "['synthetic:/unused:1:0']"]
    cfg = load_config(None, base + ["MODEL.BACKGROUND_CLASS", "True"])
    assert cfg.MODEL.BACKGROUND_CLASS and cfg.INPUT.BACKGROUND_RATIO == 0.25 and cfg.INPUT.BACKGROUND_MAX_IOU == 0.3
    assert not load_config(None, base).MODEL.BACKGROUND_CLASS  # off by default
    with pytest.raises(ValueError, match="INPUT.BACKGROUND_MAX_IOU"):
        load_config(None, base + ["INPUT.BACKGROUND_MAX_IOU", "1.5"])
    with pytest.raises(ValueError, match="INPUT.BACKGROUND_RATIO"):
        load_config(None, base + ["INPUT.BACKGROUND_RATIO", "-0.5"])


def test_training_with_background_records_it_in_the_meta(tmp_path):
    from crop_classifier.engine import Trainer
    from crop_classifier.models import load_checkpoint

    cfg = load_config(None, [
        "MODEL.ARCH", "'v3_79'", "MODEL.WIDTH", "0.125", "MODEL.BACKGROUND_CLASS", "True",
        "INPUT.BACKGROUND_RATIO", "0.5",
        "DATASETS.TRAIN", f"['synthetic:{tmp_path}/scenes/train:1:1']", "DATASETS.TEST", "[]",
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_EPOCHS", "1", "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(tmp_path / "out")])
    trainer = Trainer(cfg, progress=False)
    labels = [s[2] for s in trainer.train_loader.dataset.samples]
    n_obj = sum(lab < 12 for lab in labels)
    assert labels.count(12) == round(0.5 * n_obj) > 0
    out = trainer.train()
    meta = load_checkpoint(out["model_final"])["meta"]
    assert meta["class_names"][-1] == BACKGROUND_CLASS and meta["num_classes"] == 13
    assert meta["background_class"] == BACKGROUND_CLASS
    assert ClassifierMeta.from_dict(meta).background_class == BACKGROUND_CLASS


# ------------------------------------------------------------------------------------------ fusion
from crop_classifier.second_stage import ClassMap, SecondStage, fuse  # noqa: E402
from classifier_helpers import MeanColourNet, colour_image, inference_form  # noqa: E402

BG = BACKGROUND_CLASS
CLASSES = ["car", "bus", "person", BG]


def _bg_map():
    return ClassMap(["vehicle", "person"], CLASSES, {"vehicle": ["car", "bus"]}, background=BG)


def test_background_is_never_an_output_class_nor_in_a_set():
    m = _bg_map()
    assert m.output_class_names == ["car", "bus", "person", "vehicle"] and m.classifier_classes == CLASSES[:3]
    assert m.background_index == 3 and m.num_probs == 4 and not m.sets[:, 3].any()
    star = ClassMap(["thing"], CLASSES, "*=*", background=BG)
    assert star.targets("thing") == ["car", "bus", "person"] and not star.sets[:, 3].any()
    with pytest.raises(ValueError, match="no class"):
        ClassMap(["thing"], CLASSES, {"thing": [BG]}, background=BG)
    with pytest.raises(ValueError, match="last class"):
        ClassMap(["thing"], [BG, "car"], background=BG)
    plain = ClassMap(["vehicle", "person"], CLASSES[:3], {"vehicle": ["car", "bus"]})
    assert not plain.has_background and plain.num_probs == 3


def _bg_case(mode, drop=0.5):
    det_classes = torch.tensor([0, 0, 0, 1, 0])
    det_scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    probs = torch.tensor([
        [0.1, 0.5, 0.1, 0.3],  # vehicle: bus beats the background
        [0.2, 0.1, 0.1, 0.6],  # vehicle: the background wins with 0.6
        [0.3, 0.1, 0.2, 0.4],  # vehicle: the background wins, with 0.4 only
        [0.1, 0.1, 0.7, 0.1],  # person, agrees
        [0.0, 0.0, 0.0, 0.0],  # not classified
    ])
    classified = torch.tensor([True, True, True, True, False])
    return fuse(det_classes, det_scores, probs, classified, _bg_map(), mode, drop)


def test_replace_drops_or_downscores_a_background_box():
    classes, scores, keep, cls_scores = _bg_case("replace")
    names = [_bg_map().output_class_names[i] for i in classes]
    assert keep.tolist() == [True, False, True, True, True]  # p_bg 0.6 > 0.5: dropped; 0.4: down-scored
    assert [names[i] for i in (0, 2, 3, 4)] == ["bus", "car", "person", "vehicle"]
    assert torch.allclose(scores[[0, 2, 3, 4]], torch.tensor([0.9 * 0.5, 0.7 * 0.3, 0.6 * 0.7, 0.5]))
    assert _bg_case("replace", drop=1.0)[2].all()  # 1: never dropped, only down-scored
    assert _bg_case("replace", drop=0.0)[2].tolist() == [True, False, False, True, True]


def test_rescore_multiplies_by_the_set_probability_of_the_full_softmax():
    classes, scores, keep, _ = _bg_case("rescore")
    assert keep.all() and (classes == torch.tensor([3, 3, 3, 2, 3])).all()
    # score * sum_{k in S} p_k, the background mass included in the softmax: it lowers every score
    assert torch.allclose(scores, torch.tensor([0.9 * 0.6, 0.8 * 0.3, 0.7 * 0.4, 0.6 * 0.7, 0.5]))


def test_filter_drops_boxes_whose_top_class_is_the_background():
    _, scores, keep, _ = _bg_case("filter")
    assert keep.tolist() == [True, False, False, True, True]
    assert torch.allclose(scores, torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5]))


def _rgb_stage(**kw):
    """Classes red, green and background (the blue channel's logit): the blue square is background."""
    clf = inference_form(MeanColourNet(), ["red", "green", BG], 16, background_class=BG)
    return SecondStage(clf, ["thing", "other"], class_map={"thing": ["*"]}, **kw)


@pytest.mark.parametrize("fusion", ["replace", "rescore", "filter"])
def test_stage_with_a_background_classifier(fusion):
    img, boxes, _ = colour_image()
    stage = _rgb_stage(fusion=fusion)
    assert stage.output_class_names == ["red", "green", "thing", "other"]
    r = stage.run([img], [boxes], [torch.zeros(3, dtype=torch.long)], [torch.tensor([0.9, 0.8, 0.7])]).detections[0]
    assert r.cls_probs.shape[1] == 3
    by_src = {int(i): k for k, i in enumerate(r.index)}
    if fusion == "rescore":
        assert len(r) == 3 and float(r.scores[by_src[2]]) < 0.01  # the background box sinks to the bottom
        assert float(r.scores[by_src[0]]) > 0.85
    else:
        assert sorted(by_src) == [0, 1]  # the blue (background) box is dropped
        if fusion == "replace":
            assert [stage.output_class_names[r.classes[by_src[i]]] for i in (0, 1)] == ["red", "green"]
    kept = _rgb_stage(fusion="replace", background_drop=1.0).run(
        [img], [boxes], [torch.zeros(3, dtype=torch.long)], [torch.tensor([0.9, 0.8, 0.7])]).detections[0]
    assert len(kept) == 3 and float(kept.scores.min()) < 0.01


# ------------------------------------------------------------------------------------------ detector boxes
import json  # noqa: E402

from crop_classifier.data.detection_crops import DETECTION_ANN_ID, DetectionMatch, detection_samples  # noqa: E402


def _xywh(b):
    return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]


def test_detector_boxes_are_matched_to_the_ground_truth():
    box = lambda *v: np.array(v, np.float32)  # noqa: E731
    samples = [("x/a.png", box(0, 0, 100, 100), 0, 1), ("x/a.png", box(200, 0, 300, 100), 1, 2),
               ("x/b.png", box(0, 0, 50, 50), 2, 3)]
    objects = {"x/a.png": np.stack([samples[0][1], samples[1][1], box(0, 200, 40, 240)]),  # + an untrained object
               "x/b.png": samples[2][1][None]}
    dets = {"a.png": np.stack([box(10, 0, 110, 100),   # IoU 0.82 with object 0: class 0
                               box(10, 0, 110, 100),   # its duplicate (one hypothesis per class): counted once
                               box(250, 0, 350, 100),  # IoU 0.33 with object 1: ignored
                               box(100, 300, 150, 350),  # off every object: background
                               box(0, 195, 40, 245)]),  # the untrained object: overlaps it, so not background
            "b.png": np.stack([box(0, 0, 50, 50)]), "c.png": np.stack([box(0, 0, 9, 9)])}  # c: not a training image
    out = detection_samples(dets, samples, objects, DetectionMatch(background_label=3))
    assert [(x[0], x[1].tolist(), x[2], x[3]) for x in out] == [
        ("x/a.png", [10, 0, 110, 100], 0, DETECTION_ANN_ID), ("x/a.png", [100, 300, 150, 350], 3, DETECTION_ANN_ID),
        ("x/b.png", [0, 0, 50, 50], 2, DETECTION_ANN_ID)]
    assert [x[2] for x in detection_samples(dets, samples, objects, DetectionMatch())] == [0, 2]  # no background
    assert len(detection_samples(dets, samples, objects, DetectionMatch(background_label=3, ratio=1 / 3))) == 1
    with pytest.raises(ValueError, match="neg_iou"):
        detection_samples(dets, samples, objects, DetectionMatch(pos_iou=0.3, neg_iou=0.5))


def test_training_reads_a_first_stage_detections_file(tmp_path):
    from crop_classifier.engine import Trainer

    train = tmp_path / "scenes" / "train"
    ann = generate_scenes(train, 1, seed=1, split_name="train")
    s = load_coco_samples(ann, train)
    path = s.samples[0][0]
    objs = [x for x in s.samples if x[0] == path]
    results = [{"file_name": "somewhere/else/" + path.split("/")[-1], "image_id": 1, "category_id": 1,
                "category_name": "thing", "bbox": _xywh(o[1]), "score": 0.9} for o in objs]
    (tmp_path / "det.json").write_text(json.dumps(results))
    cfg = load_config(None, [
        "MODEL.ARCH", "'v3_79'", "MODEL.WIDTH", "0.125", "MODEL.BACKGROUND_CLASS", "True",
        "DATASETS.TRAIN", f"['synthetic:{train}:1:1']", "DATASETS.TEST", "[]",
        "DATASETS.DETECTIONS", f"['{tmp_path / 'det.json'}']", "INPUT.DETECTION_RATIO", "1.0",
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_EPOCHS", "1", "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(tmp_path / "out")])
    trainer = Trainer(cfg, progress=False)
    ds = trainer.train_loader.dataset
    extra = [x for x in ds.samples if x[3] == DETECTION_ANN_ID]
    assert sorted(x[2] for x in extra) == sorted(o[2] for o in objs)  # no random negatives with detections
    assert not any(x[3] == NEGATIVE_ANN_ID for x in ds.samples)
    x, y = ds.__getitems__(list(range(len(ds.samples))))
    assert torch.isfinite(x).all() and y.tolist() == [z[2] for z in ds.samples]
    (tmp_path / "bad.json").write_text(json.dumps([{"file_name": "a.png", "bbox": [0, 0, 1]}]))
    bad = cfg.clone()
    bad.defrost()
    bad.DATASETS.DETECTIONS = (str(tmp_path / "bad.json"),)
    with pytest.raises(ValueError, match="DATASETS.DETECTIONS.*bad.json"):
        Trainer(bad, progress=False)


# ------------------------------------------------------------------------------------------ size-gate calibration
def test_score_calibration_is_the_mean_true_class_probability():
    from crop_classifier.engine.trainer import score_calibration

    probs = torch.tensor([[0.8, 0.2, 0.0], [0.6, 0.4, 0.0], [0.3, 0.7, 0.0]])
    assert score_calibration(probs, torch.tensor([0, 0, 1]), ["a", "b", "c"]) == {"a": 0.7, "b": 0.7}


def _calibrated_stage(**kw):
    clf = inference_form(MeanColourNet(), ["red", "green", "blue"], 16,
                         score_calibration={"red": 0.5, "green": 0.8, "blue": 0.2})
    return SecondStage(clf, ["thing", "other"], class_map={"thing": ["*"]}, **kw)


def test_gated_boxes_get_the_calibrated_score_and_no_longer_outrank_classified_ones():
    img, boxes, _ = colour_image()
    big = torch.tensor([[0.0, 0, 100, 100]])  # over the max-size gate: not classified
    all_boxes = torch.cat([boxes, big])
    args = ([img], [all_boxes], [torch.tensor([0, 0, 0, 1])], [torch.tensor([0.6, 0.6, 0.6, 0.9])])
    r = _calibrated_stage(max_box_size=60).run(*args).detections[0]
    by_src = {int(i): k for k, i in enumerate(r.index)}
    assert not r.classified[by_src[3]]  # the unmapped class: never calibrated
    assert abs(float(r.scores[by_src[3]]) - 0.9) < 1e-6
    gated = _calibrated_stage(max_box_size=60).run([img], [all_boxes], [torch.zeros(4, dtype=torch.long)],
                                               [torch.tensor([0.6, 0.6, 0.6, 0.9])]).detections[0]
    g = {int(i): k for k, i in enumerate(gated.index)}
    assert not gated.classified[g[3]] and gated.classified[g[0]]
    # thing -> {red, green, blue}: factor (0.5 + 0.8 + 0.2) / 3 = 0.5; the detector's own score is kept
    assert abs(float(gated.scores[g[3]]) - 0.45) < 1e-6 and abs(float(gated.det_scores[g[3]]) - 0.9) < 1e-6
    assert float(gated.scores[g[0]]) > 0.5 and int(gated.index[0]) != 3  # a classified box now ranks first
    plain = _calibrated_stage(max_box_size=60, calibrate_gates=False).run(
        [img], [all_boxes], [torch.zeros(4, dtype=torch.long)], [torch.tensor([0.6, 0.6, 0.6, 0.9])]).detections[0]
    assert int(plain.index[0]) == 3 and abs(float(plain.scores[0]) - 0.9) < 1e-6  # uncalibrated, it outranks all
