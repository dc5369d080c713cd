"""The Python entry: stage(image, detections) with crop_classifier.Detections or sv.Detections."""
import subprocess
import sys

import numpy as np
import pytest
import torch

import crop_classifier as cc
from crop_classifier.models.inference import Classifier
from crop_classifier.structures import CropSpec
from stage_helpers import COLOURS, colour_classifier, colour_image


def _scene():
    img, boxes, colour = colour_image()
    hwc = img.permute(1, 2, 0).numpy().copy()
    # input order deliberately not score order; one box of a class the classifier does not know
    dets = cc.Detections(xyxy=boxes.numpy(), class_id=[0, 0, 1], confidence=[0.5, 0.9, 0.7],
                         data={"source": np.array(["a", "b", "c"])})
    return hwc, dets, colour


def test_call_returns_the_kept_boxes_in_input_order_with_what_each_stage_said():
    hwc, dets, colour = _scene()
    stage = cc.SecondStage(colour_classifier(), detector_classes=["thing", "other"],
                           config=cc.SecondStageConfig(class_map="thing=*"))
    out = stage(hwc, dets)
    assert isinstance(out, cc.Detections) and len(out) == 3
    assert out.data["index"].tolist() == [0, 1, 2]
    assert out.data["source"].tolist() == ["a", "b", "c"]  # the caller's own fields follow their boxes
    assert out.data["class_name"][:2].tolist() == [COLOURS[int(c)] for c in colour[:2]]
    assert out.data["class_name"][2] == "other"  # unmapped: passes through with the detector's class
    assert out.data["detector_class_id"].tolist() == [0, 0, 1]
    np.testing.assert_allclose(out.data["detector_confidence"], [0.5, 0.9, 0.7])
    np.testing.assert_allclose(out.confidence[:2], out.data["detector_confidence"][:2]
                               * out.data["classifier_confidence"][:2], rtol=1e-6)
    assert np.isnan(out.data["classifier_confidence"][2]) and out.confidence[2] == pytest.approx(0.7)
    np.testing.assert_allclose(out.xyxy, dets.xyxy)


def test_call_equals_the_tensor_level_run_and_takes_chw_tensors_and_lists():
    hwc, dets, _ = _scene()
    stage = cc.SecondStage(colour_classifier(), ["thing", "other"], class_map="thing=*", fusion="rescore")
    chw = torch.from_numpy(hwc).permute(2, 0, 1)
    ref = stage.run([chw], [torch.from_numpy(dets.xyxy)], [torch.from_numpy(dets.class_id)],
                    [torch.from_numpy(dets.confidence)]).detections[0]
    ref = ref.select(torch.argsort(ref.index))
    for out in (stage(hwc, dets), stage(chw, dets), stage([hwc, hwc], [dets, dets])[1]):
        np.testing.assert_array_equal(out.class_id, ref.classes.numpy())
        np.testing.assert_allclose(out.confidence, ref.scores.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="HxWx3"):
        stage(hwc[:, :, :2], dets)
    with pytest.raises(ValueError, match="class_id"):
        stage(hwc, cc.Detections(xyxy=dets.xyxy))
    with pytest.raises(ValueError, match="list"):
        stage([hwc, hwc], dets)


def test_supervision_detections_in_and_out():
    sv = pytest.importorskip("supervision")
    hwc, dets, colour = _scene()
    stage = cc.SecondStage(colour_classifier(), ["thing", "other"], class_map="thing=*")
    given = sv.Detections(xyxy=dets.xyxy, class_id=dets.class_id, confidence=dets.confidence,
                          tracker_id=np.array([7, 8, 9]))
    out = stage(hwc, given)
    assert isinstance(out, sv.Detections)
    assert out.tracker_id.tolist() == [7, 8, 9] and out["index"].tolist() == [0, 1, 2]
    assert list(out["class_name"][:2]) == [COLOURS[int(c)] for c in colour[:2]]
    assert cc.Detections.from_supervision(out).to_supervision().xyxy.shape == (3, 4)


def test_empty_detections_and_drops_shrink_the_output_but_keep_the_order():
    hwc, dets, _ = _scene()
    stage = cc.SecondStage(colour_classifier(), ["thing", "other"], class_map="thing=red", fusion="filter")
    out = stage(hwc, dets)
    # filter: the classifier disagrees with "thing=red" on the green box (index 1): dropped; the rest in order
    assert out.data["index"].tolist() == [0, 2]
    assert len(stage(hwc, cc.Detections.empty())) == 0


def test_build_classifier_reads_width_and_classes_from_a_checkpoint(tmp_path):
    from crop_classifier.models import model_meta, save_checkpoint

    net = cc.build_classifier("v3_79", 3, width=0.0625, aux_logits=False)
    path = save_checkpoint(tmp_path / "c.pth", net, model_meta(net, "v3_79", ["a", "b", "c"], context=0.2))
    again = cc.build_classifier("v3_79", weights=path, aux_logits=False)
    assert again.width == 0.0625 and again.num_classes == 3
    for k, v in net.state_dict().items():
        assert torch.equal(again.state_dict()[k], v)
    clf = cc.load_classifier(path, "torch", device="cpu")
    assert clf.meta.crop == CropSpec(79, 0.2, "square") and clf.routes is None
    assert isinstance(clf, Classifier)  # meta, routes, device, __call__, logits


def test_a_meta_without_crop_crops_as_training_does():
    from crop_classifier.config import get_cfg

    meta = {"arch": "v3_79", "class_names": ["a"], "input_size": 79}
    assert CropSpec.from_meta(meta).context == get_cfg().CROP.CONTEXT


def test_import_is_light_and_never_imports_detectron2():
    code = ("import sys, crop_classifier as cc; assert 'torch' not in sys.modules; cc.SecondStage; "
            "assert 'detectron2' not in sys.modules; print(sorted(cc.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for name in ("SecondStage", "SecondStageConfig", "Detections", "load_classifier", "build_classifier",
                 "build_first_stage"):
        assert name in out
