"""The Detectron2 plugin with tiny random-weight models on CPU: CropClassifierRCNN, config, predictor, training."""
import copy
import math

import numpy as np
import pytest
import torch

pytest.importorskip("detectron2")
pytestmark = pytest.mark.detectron2

from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import META_ARCH_REGISTRY, build_model  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402

from crop_classifier.d2 import (  # noqa: E402
    CropClassifierPredictor,
    CropClassifierRCNN,
    add_crop_classifier_config,
)
from crop_classifier.errors import WeightsUnavailableError  # noqa: E402
from crop_classifier.models import build_classifier, model_meta, save_checkpoint  # noqa: E402

from classifier_helpers import COLOURS, MeanColourNet, inference_form  # noqa: E402
from d2_helpers import tiny_cfg  # noqa: E402
from numerics import assert_fp32_close  # noqa: E402


def colour_model(*opts):
    """The tiny detector with a classifier whose answer is known (mean colour of the crop)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*opts)).eval()
    stage = model.second_stage
    stage.classifier = inference_form(MeanColourNet(), COLOURS, 16)
    stage.crop = stage.classifier.crop
    return model


def squares(h=200, w=240):
    """HWC RGB uint8 image with a red, a green and a blue square; their XYXY boxes."""
    img = np.zeros((h, w, 3), dtype=np.uint8)
    boxes = np.array([[20, 20, 60, 60], [100, 80, 140, 120], [180, 140, 220, 180]], dtype=np.float32)
    for c, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        img[y1:y2, x1:x2, c] = 255
    return img, boxes


def given_boxes(boxes, image_hw, classes, scores):
    inst = Instances(image_hw)
    inst.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32))
    inst.pred_classes = torch.as_tensor(classes)
    inst.scores = torch.as_tensor(scores, dtype=torch.float32)
    return inst


def test_registered_and_config_keys():
    assert META_ARCH_REGISTRY.get("CropClassifierRCNN") is CropClassifierRCNN
    cfg = add_crop_classifier_config(get_cfg())
    add_crop_classifier_config(cfg)  # twice is harmless
    c = cfg.MODEL.CROP_CLASSIFIER
    for key in ("ARCH", "WIDTH", "WEIGHTS", "CLASS_NAMES", "CLASS_MAP", "CONTEXT", "MIN_BOX_SIZE", "MAX_BOX_SIZE",
                "RECLASSIFY", "FUSION", "MAX_CROPS_PER_FORWARD"):
        assert key in c


def test_inference_fields_shapes_and_output_classes():
    torch.manual_seed(0)
    model = build_model(tiny_cfg()).eval()
    assert model.output_class_names == ["red", "green", "blue", "thing", "other"]
    inputs = []
    for h, w in ((200, 240), (150, 100)):
        img = np.random.RandomState(h).randint(0, 255, (h, w, 3)).astype(np.uint8)
        small = torch.as_tensor(img[::2, ::2].transpose(2, 0, 1).astype("float32"))
        inputs.append({"image": small, "original_image": torch.as_tensor(img.transpose(2, 0, 1).copy()),
                       "height": h, "width": w})
    with torch.no_grad():
        out = model(inputs)
    for o, (h, w) in zip(out, ((200, 240), (150, 100))):
        inst = o["instances"]
        assert inst.image_size == (h, w)
        n = len(inst)
        assert n > 0  # SCORE_THRESH_TEST 0: random weights still give boxes
        assert inst.cls_probs.shape == (n, 3) and inst.det_classes.shape == (n,) and inst.det_scores.shape == (n,)
        assert int(inst.pred_classes.max()) < 5
        classified = inst.classified
        assert torch.allclose(inst.cls_probs[classified].sum(1), torch.ones(int(classified.sum())), atol=1e-4)
        # replace: score = detector score x classifier probability of the chosen class
        assert torch.allclose(inst.scores[classified], (inst.det_scores * inst.cls_scores)[classified], atol=1e-6)
        assert (inst.pred_boxes.tensor[:, 2] <= w + 1e-3).all() and (inst.pred_boxes.tensor[:, 3] <= h + 1e-3).all()


def test_crops_come_from_the_original_image_else_from_the_scaled_image():
    model = colour_model()
    img, boxes = squares()
    # The detector input is half size with its colour channels rolled: crops taken from it read the
    # wrong colour, crops from "original_image" read the right one.
    small = np.roll(img[::2, ::2], 1, axis=2)
    det = given_boxes(boxes / 2, small.shape[:2], [0, 0, 0], [0.9, 0.8, 0.7])
    base = {"image": torch.as_tensor(small.transpose(2, 0, 1).astype("float32")), "height": 200, "width": 240}
    with_orig = dict(base, original_image=torch.as_tensor(img.transpose(2, 0, 1).copy()))
    cfg_format = model.input_format  # BGR by default: feed both images in that format
    assert cfg_format == "BGR"
    for d in (base, with_orig):
        d["image"] = d["image"].flip(0)
    with_orig["original_image"] = with_orig["original_image"].flip(0)
    with torch.no_grad():
        a = model.inference([with_orig], [copy.deepcopy(det)])[0]["instances"]
        b = model.inference([base], [copy.deepcopy(det)])[0]["instances"]
    names = model.output_class_names
    for inst, expect in ((a, COLOURS), (b, [COLOURS[(i + 1) % 3] for i in range(3)])):
        order = torch.argsort(inst.det_scores, descending=True)
        assert [names[int(c)] for c in inst.pred_classes[order]] == expect
        # boxes are reported in original-image coordinates
        assert torch.allclose(inst.pred_boxes.tensor[order], torch.as_tensor(boxes), atol=1e-3)


@pytest.mark.parametrize("fusion", ["replace", "rescore", "filter"])
def test_fusion_modes_through_the_config(fusion):
    model = colour_model("MODEL.CROP_CLASSIFIER.FUSION", fusion,
                         "MODEL.CROP_CLASSIFIER.CLASS_MAP", [["thing", "red"], ["other", "green,blue"]])
    img, boxes = squares()
    bgr = torch.as_tensor(img[:, :, ::-1].transpose(2, 0, 1).copy())
    det = given_boxes(boxes, img.shape[:2], [0, 0, 1], [0.9, 0.8, 0.7])  # red=thing ok, green=thing wrong, blue=other ok
    inp = {"image": bgr.float(), "original_image": bgr, "height": 200, "width": 240}
    with torch.no_grad():
        inst = model.inference([inp], [det])[0]["instances"]
    names = [model.output_class_names[int(c)] for c in inst.pred_classes]
    by_det = {round(float(s), 3): (n, float(sc)) for s, n, sc in zip(inst.det_scores, names, inst.scores)}
    if fusion == "filter":
        assert sorted(by_det) == [0.7, 0.9]  # the green square called "thing" (= red) is dropped
        assert by_det[0.9] == ("thing", pytest.approx(0.9))  # kept boxes keep class and score
    elif fusion == "rescore":
        assert [by_det[s][0] for s in (0.9, 0.8, 0.7)] == ["thing", "thing", "other"]  # the detector's classes
        assert by_det[0.8][1] < 0.8 * 0.5  # the classifier doubts the green square is red
    else:
        assert [by_det[s][0] for s in (0.9, 0.8, 0.7)] == ["red", "red", "blue"]  # decision within the set
    if fusion != "filter":
        assert sorted(inst.det_classes.tolist()) == [0, 0, 1]


def test_zero_detections_give_empty_instances_with_all_fields():
    model = colour_model("MODEL.ROI_HEADS.SCORE_THRESH_TEST", 1.01)
    img, _ = squares()
    t = torch.as_tensor(img.transpose(2, 0, 1).copy())
    with torch.no_grad():
        inst = model([{"image": t.float(), "original_image": t, "height": 200, "width": 240}])[0]["instances"]
    assert len(inst) == 0
    assert inst.cls_probs.shape == (0, 3) and inst.det_classes.shape == (0,)


def test_size_gate_and_reclassify_selection():
    model = colour_model("MODEL.CROP_CLASSIFIER.MIN_BOX_SIZE", 50.0)
    img, boxes = squares()
    t = torch.as_tensor(img[:, :, ::-1].transpose(2, 0, 1).copy())
    det = given_boxes(np.concatenate([boxes, [[0, 0, 120, 100]]]), img.shape[:2], [0, 0, 1, 0], [0.9, 0.8, 0.7, 0.6])
    with torch.no_grad():
        inst = model.inference([{"image": t.float(), "original_image": t, "height": 200, "width": 240}], [det])[0]["instances"]
    classified = {round(float(s), 2): bool(c) for s, c in zip(inst.det_scores, inst.classified)}
    assert classified == {0.9: False, 0.8: False, 0.7: False, 0.6: True}  # 40 px squares under the gate
    names = {round(float(s), 2): model.output_class_names[int(c)] for s, c in zip(inst.det_scores, inst.pred_classes)}
    assert names[0.9] == "thing" and names[0.7] == "other"
    assert all(math.isnan(float(v)) for v, c in zip(inst.cls_scores, inst.classified) if not c)


def test_classifier_weights_from_checkpoint_and_mismatch_errors(tmp_path):
    torch.manual_seed(0)
    clf = build_classifier("v3_79", 3, width=0.0625, aux_logits=False)
    path = save_checkpoint(tmp_path / "clf.pth", clf, model_meta(clf, "v3_79", COLOURS, context=0.2, mode="square"))
    model = build_model(tiny_cfg("MODEL.CROP_CLASSIFIER.WEIGHTS", str(path)))
    assert torch.equal(model.second_stage.classifier.net.fc.weight, clf.fc.weight)
    assert model.second_stage.crop.context == 0.2
    from crop_classifier.errors import CheckpointError

    with pytest.raises(CheckpointError, match="class_names"):
        build_model(tiny_cfg("MODEL.CROP_CLASSIFIER.WEIGHTS", str(path), "MODEL.CROP_CLASSIFIER.CLASS_NAMES", ["a", "b", "c"]))
    with pytest.raises(CheckpointError, match="v3_151"):
        build_model(tiny_cfg("MODEL.CROP_CLASSIFIER.WEIGHTS", str(path), "MODEL.CROP_CLASSIFIER.ARCH", "v3_151"))
    with pytest.raises(ValueError, match="WEIGHTS is empty.*set MODEL.CROP_CLASSIFIER.CLASS_NAMES"):
        build_model(tiny_cfg("MODEL.CROP_CLASSIFIER.CLASS_NAMES", []))
    with pytest.raises(ValueError, match="set MODEL.CROP_CLASSIFIER.ARCH, MODEL.CROP_CLASSIFIER.WIDTH"):
        build_model(tiny_cfg("MODEL.CROP_CLASSIFIER.ARCH", None, "MODEL.CROP_CLASSIFIER.WIDTH", None))


def test_width_classes_and_crop_come_from_the_checkpoint_unless_set(tmp_path):
    """Without WIDTH (nor ARCH, CLASS_NAMES, CONTEXT, CROP_MODE) the checkpoint's meta decides;
    a WIDTH that contradicts it is an error naming both values; CONTEXT / CROP_MODE set in the config win."""
    torch.manual_seed(0)
    clf = build_classifier("v3_79", 3, width=0.125, aux_logits=False)
    path = save_checkpoint(tmp_path / "clf.pth", clf, model_meta(clf, "v3_79", COLOURS, context=0.2, mode="letterbox"))
    unset = ["MODEL.CROP_CLASSIFIER.WEIGHTS", str(path), "MODEL.CROP_CLASSIFIER.WIDTH", None,
             "MODEL.CROP_CLASSIFIER.ARCH", None, "MODEL.CROP_CLASSIFIER.CLASS_NAMES", []]
    stage = build_model(tiny_cfg(*unset)).second_stage
    assert torch.equal(stage.classifier.net.fc.weight, clf.fc.weight)  # width 0.125 built from the meta
    assert stage.class_map.classifier_classes == COLOURS
    assert (stage.crop.context, stage.crop.mode, stage.crop.size) == (0.2, "letterbox", 79)
    stage = build_model(tiny_cfg(*unset, "MODEL.CROP_CLASSIFIER.CONTEXT", 0.0, "MODEL.CROP_CLASSIFIER.CROP_MODE",
                                 "square")).second_stage
    assert (stage.crop.context, stage.crop.mode) == (0.0, "square")
    build_model(tiny_cfg(*unset, "MODEL.CROP_CLASSIFIER.WIDTH", 0.125))  # agreeing is fine
    from crop_classifier.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"WIDTH is 0\.25 but .*clf\.pth holds a classifier with width 0\.125"):
        build_model(tiny_cfg(*unset, "MODEL.CROP_CLASSIFIER.WIDTH", 0.25))


@pytest.mark.parametrize("key,old", [("CONTEXT", -1.0), ("CROP_MODE", "")])
def test_old_from_the_checkpoint_sentinels_are_refused_by_key(key, old):
    """-1.0 / "" used to mean "the checkpoint's"; now that is an unset key, and the old values name the key."""
    cfg = tiny_cfg(f"MODEL.CROP_CLASSIFIER.{key}", old)
    with pytest.raises(ValueError, match=rf"MODEL\.CROP_CLASSIFIER\.{key}: expected .*, got"):
        build_model(cfg)


def test_predictor_passes_the_original_image_and_names_output_classes(tmp_path):
    cfg = tiny_cfg("MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0)
    torch.manual_seed(0)
    weights = tmp_path / "det.pth"
    torch.save({"model": build_model(cfg).state_dict()}, weights)
    cfg.MODEL.WEIGHTS = str(weights)
    pred = CropClassifierPredictor(cfg)
    assert pred.metadata.thing_classes == ["red", "green", "blue", "thing", "other"]
    seen = {}
    original = pred.model.second_stage.run

    def spy(images, *args):
        seen["shapes"] = [tuple(i.shape) for i in images]
        return original(images, *args)

    pred.model.second_stage.run = spy
    img, _ = squares(300, 400)  # MIN_SIZE_TEST 128: the detector sees it at 128 x 170
    inst = pred(img[:, :, ::-1].copy())["instances"]
    assert inst.image_size == (300, 400)
    assert seen["shapes"] == [(3, 300, 400)]
    from detectron2.utils.visualizer import Visualizer

    vis = Visualizer(img, pred.metadata).draw_instance_predictions(inst.to("cpu"))
    assert vis.get_image().shape == (300, 400, 3)


def test_predictor_offline_weights_error_names_the_key():
    cfg = tiny_cfg()
    cfg.MODEL.WEIGHTS = "https://dl.fbaipublicfiles.com/detectron2/nothing-here/model_final.pkl"
    with pytest.raises(WeightsUnavailableError, match="MODEL.WEIGHTS"):
        CropClassifierPredictor(cfg)
    cfg.MODEL.WEIGHTS = "/nonexistent/model_final.pth"
    with pytest.raises(WeightsUnavailableError, match="MODEL.WEIGHTS"):
        CropClassifierPredictor(cfg)


def test_predictor_reports_only_real_gaps_of_the_detector_checkpoint(tmp_path, caplog):
    """A detector-only MODEL.WEIGHTS leaves the classifier (from CROP_CLASSIFIER.WEIGHTS) out;
    only a genuinely missing detector key is reported, not ~200 classifier tensors."""
    import logging

    torch.manual_seed(0)
    clf = build_classifier("v3_79", 3, width=0.0625, aux_logits=False)
    clf_path = save_checkpoint(tmp_path / "clf.pth", clf, model_meta(clf, "v3_79", COLOURS))
    cfg = tiny_cfg("MODEL.CROP_CLASSIFIER.WEIGHTS", str(clf_path))
    detector = {k: v for k, v in build_model(cfg).state_dict().items()
                if not k.startswith("second_stage.") and not k.startswith("roi_heads.box_predictor.bbox_pred.")}
    weights = tmp_path / "det.pth"
    torch.save({"model": detector}, weights)
    cfg.MODEL.WEIGHTS = str(weights)
    with caplog.at_level(logging.WARNING):
        pred = CropClassifierPredictor(cfg)
    log = caplog.text
    assert "roi_heads.box_predictor.bbox_pred" in log  # a real gap is still reported
    assert "second_stage" not in log
    assert torch.equal(pred.model.second_stage.classifier.net.fc.weight, clf.fc.weight)
    # Without CROP_CLASSIFIER.WEIGHTS the classifier must come from MODEL.WEIGHTS: missing, it is a real gap.
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        CropClassifierPredictor(tiny_cfg("MODEL.WEIGHTS", str(weights)))
    assert "second_stage.classifier" in caplog.text


def test_default_trainer_trains_the_detector_with_the_classifier_frozen(tmp_path):
    import cv2
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.engine import DefaultTrainer
    from detectron2.structures import BoxMode

    records = []
    for i in range(4):
        img, boxes = squares()
        path = tmp_path / f"img{i}.png"
        cv2.imwrite(str(path), img[:, :, ::-1])
        records.append({"file_name": str(path), "image_id": i, "height": 200, "width": 240, "annotations": [
            {"bbox": b.tolist(), "bbox_mode": BoxMode.XYXY_ABS, "category_id": 0} for b in boxes]})
    name = "crop_classifier_test_squares"
    if name not in DatasetCatalog.list():
        DatasetCatalog.register(name, lambda: copy.deepcopy(records))
        MetadataCatalog.get(name).set(thing_classes=["thing", "other"])
    cfg = tiny_cfg(
        "MODEL.CROP_CLASSIFIER.DETECTOR_CLASS_NAMES", [],  # from the dataset's metadata
        "DATASETS.TRAIN", (name,), "DATASETS.TEST", (),
        "SOLVER.IMS_PER_BATCH", 2, "SOLVER.MAX_ITER", 2, "SOLVER.BASE_LR", 0.01, "SOLVER.CHECKPOINT_PERIOD", 1000,
        "DATALOADER.NUM_WORKERS", 0, "OUTPUT_DIR", str(tmp_path / "out"), "TEST.EVAL_PERIOD", 0,
    )
    trainer = DefaultTrainer(cfg)
    model = trainer.model
    clf_before = {k: v.clone() for k, v in model.second_stage.classifier.state_dict().items()}
    det_before = model.roi_heads.box_predictor.cls_score.weight.clone()
    trainer.train()
    assert not torch.equal(det_before, model.roi_heads.box_predictor.cls_score.weight)
    for k, v in model.second_stage.classifier.state_dict().items():
        assert torch.equal(v, clf_before[k]), k  # weights and BN statistics untouched
    assert not model.second_stage.classifier.training
    assert (tmp_path / "out" / "model_final.pth").is_file()


def test_narrow_backbone_has_the_asked_widths():
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY

    cfg = tiny_cfg("MODEL.BACKBONE.NAME", "build_narrow_resnet_fpn_backbone", "MODEL.RESNETS.STEM_OUT_CHANNELS", 16,
                   "MODEL.RESNETS.RES2_OUT_CHANNELS", 16)
    bb = BACKBONE_REGISTRY.get("build_narrow_resnet_fpn_backbone")(cfg, ShapeSpec(channels=3))
    feats = bb(torch.zeros(1, 3, 64, 96))
    assert sorted(feats) == ["p2", "p3", "p4", "p5", "p6"]
    assert feats["p2"].shape == (1, 32, 16, 24) and feats["p6"].shape[-2:] == (1, 2)
    widths = [bb.bottom_up.output_shape()[f"res{i}"].channels for i in range(2, 6)]
    assert widths == [16, 32, 64, 128]
    with pytest.raises(ValueError, match="18 or 34"):
        BACKBONE_REGISTRY.get("build_narrow_resnet_fpn_backbone")(tiny_cfg("MODEL.RESNETS.DEPTH", 50), ShapeSpec(channels=3))


def test_precision_key_and_int8_checkpoints(tmp_path):
    """MODEL.CROP_CLASSIFIER.PRECISION: an int8 checkpoint (tools/quantize.py) runs in the meta-architecture;
    a precision the device cannot run is an error naming it."""
    from crop_classifier.deploy.quantize import CalibrationOptions, encode_state, int8_meta, quantize_model
    from crop_classifier.errors import UsageError
    from crop_classifier.structures import ClassifierMeta
    from crop_classifier.utils.io import atomic_torch_save

    torch.manual_seed(0)
    clf = build_classifier("v3_79", 3, width=0.0625, aux_logits=False).eval()
    meta = ClassifierMeta.from_dict(model_meta(clf, "v3_79", COLOURS))
    qmodel = quantize_model(clf, meta, iter([torch.rand(8, 3, 79, 79)]), observer="minmax")
    path = tmp_path / "int8.pth"
    atomic_torch_save(path, {"model": encode_state(qmodel.state_dict()),
                             "meta": int8_meta(meta, CalibrationOptions(["random"], num_crops=8))})
    model = build_model(tiny_cfg("MODEL.CROP_CLASSIFIER.WEIGHTS", str(path))).eval()
    img, boxes = squares()
    inst = Instances((200, 240), pred_boxes=Boxes(torch.from_numpy(boxes)), pred_classes=torch.zeros(3, dtype=torch.long),
                     scores=torch.tensor([0.9, 0.8, 0.7]))
    out = model.second_stage_on([{"original_image": torch.from_numpy(img).permute(2, 0, 1)}], [inst])[0]
    assert len(out) == 3 and bool(out.classified.all())
    with pytest.raises(UsageError, match="fp16"):
        build_model(tiny_cfg("MODEL.CROP_CLASSIFIER.PRECISION", "fp16"))


def test_predictor_takes_a_frozen_config_and_a_combined_checkpoint(tmp_path):
    """A frozen config works, as with DefaultPredictor; a combined checkpoint (the whole model's state dict:
    detector and folded classifier) loads both parts."""
    torch.manual_seed(3)
    cfg = tiny_cfg("MODEL.CROP_CLASSIFIER.ARCH", "v3_79", "MODEL.CROP_CLASSIFIER.WIDTH", 0.0625)
    model = build_model(cfg).eval()
    weights = tmp_path / "combined.pth"
    torch.save({"model": model.state_dict()}, weights)
    cfg.MODEL.WEIGHTS = str(weights)
    cfg.freeze()
    torch.manual_seed(4)  # another random init: what matches comes from the file
    pred = CropClassifierPredictor(cfg)
    x = torch.rand(5, 3, 79, 79)
    want = model.second_stage.classifier.logits(x)
    assert_fp32_close(pred.model.second_stage.classifier.logits(x), want, what="the combined checkpoint's classifier")
    for k, v in model.state_dict().items():
        assert torch.equal(pred.model.state_dict()[k].cpu(), v.cpu()), k
