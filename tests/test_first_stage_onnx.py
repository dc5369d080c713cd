"""onnx:FILE first stages on tiny graphs built with onnx.helper whose outputs are known: YOLOv8 boxes come back
through Ultralytics' letterbox onto the original image, class names from the metadata, thresholds and
class-wise NMS, batching equal to one at a time; YOLOv5 and boxes/scores/labels layouts; every bad input a
clear UsageError; and one tools/infer.py run with the demo classifier."""
import json
from pathlib import Path

import numpy as np
import pytest

from crop_classifier.detectors import OnnxDetector, build_first_stage
from crop_classifier.detectors.onnx_detector import letterbox
from crop_classifier.errors import UsageError
from crop_classifier.structures import ImageRecord
from tool_loader import load_tool

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["cat", "dog", "bird"]
S = 64  # the graphs' input size


def _const(name, array):
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(array), name + "_v"))


def _image_mean(nodes, batch_shape):
    """Nodes computing the per-sample mean of the input ``images`` as ``batch_shape`` (e.g. [-1, 1, 1])."""
    nodes += [_const("axes", np.array([1, 2, 3], np.int64)), _const("mshape", np.array(batch_shape, np.int64)),
              helper.make_node("ReduceMean", ["images", "axes"], ["m4"], keepdims=1),
              helper.make_node("Reshape", ["m4", "mshape"], ["m"])]


def _save(path, nodes, inputs, outputs, names=None):
    graph = helper.make_graph(nodes, "detector", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    if names is not None:  # what Ultralytics writes: str() of the names dict
        model.metadata_props.add(key="names", value=str(dict(enumerate(names))))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def yolo_graph(path, fixed, dynamic=None, *, layout="yolov8", names=NAMES, batch="batch"):
    """A YOLOv8 ``[B, 4+K, N]`` (or YOLOv5 ``[B, N, 5+K]``) output = ``fixed`` + ``dynamic`` x the image's mean;
    ``fixed``/``dynamic`` given per anchor as ``[N, 4+K]`` (``[N, 5+K]``) rows."""
    fixed = np.asarray(fixed, np.float32)
    dynamic = np.zeros_like(fixed) if dynamic is None else np.asarray(dynamic, np.float32)
    if layout == "yolov8":
        fixed, dynamic = fixed.T, dynamic.T
    nodes = []
    _image_mean(nodes, [-1, 1, 1])
    nodes += [_const("fixed", fixed[None]), _const("dyn", dynamic[None]),
              helper.make_node("Mul", ["m", "dyn"], ["md"]), helper.make_node("Add", ["fixed", "md"], ["output0"])]
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, S, S])
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, *fixed.shape])
    return _save(path, nodes, [inp], [out], names)


def boxes_graph(path, boxes, scores, labels, *, size_input=False, names=NAMES):
    """End-to-end outputs boxes [B, N, 4] / scores [B, N] / labels [B, N]. With ``size_input`` (RT-DETR style)
    ``boxes`` are normalised and scaled by the ``orig_target_sizes`` (w, h) input, as such exports do."""
    n = len(scores)
    nodes = []
    _image_mean(nodes, [-1, 1])
    nodes += [_const("b", np.asarray(boxes, np.float32)[None]), _const("s", np.asarray(scores, np.float32)[None]),
              _const("zero", np.float32(0)), _const("labels_c", np.asarray(labels, np.int64)[None]),
              helper.make_node("Mul", ["m", "zero"], ["m0"]), helper.make_node("Add", ["s", "m0"], ["scores"]),
              helper.make_node("Identity", ["labels_c"], ["labels"])]
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, S, S])]
    if size_input:
        inputs.append(helper.make_tensor_value_info("orig_target_sizes", TensorProto.INT64, [1, 2]))
        nodes += [helper.make_node("Cast", ["orig_target_sizes"], ["wh"], to=TensorProto.FLOAT),
                  helper.make_node("Concat", ["wh", "wh"], ["whwh"], axis=1),
                  _const("ushape", np.array([-1, 1, 4], np.int64)),
                  helper.make_node("Reshape", ["whwh", "ushape"], ["whwh3"]),
                  helper.make_node("Mul", ["b", "whwh3"], ["boxes"])]
    else:
        nodes.append(helper.make_node("Identity", ["b"], ["boxes"]))
    outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, n, 4]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, n]),
               helper.make_tensor_value_info("labels", TensorProto.INT64, [1, n])]
    return _save(path, nodes, inputs, outputs, names)


def torchvision_like_graph(path, boxes_rel, scores, labels, names=NAMES):
    """torchvision's export: one [3, H, W] image in, boxes [N, 4] in its pixels out (here ``boxes_rel`` x its size)."""
    n = len(scores)
    nodes = [helper.make_node("Shape", ["image"], ["shape"]), _const("idx", np.array([2, 1, 2, 1], np.int64)),
             helper.make_node("Gather", ["shape", "idx"], ["whwh_i"], axis=0),
             helper.make_node("Cast", ["whwh_i"], ["whwh"], to=TensorProto.FLOAT),
             _const("b", np.asarray(boxes_rel, np.float32)), helper.make_node("Mul", ["b", "whwh"], ["boxes"]),
             _const("scores_c", np.asarray(scores, np.float32)), helper.make_node("Identity", ["scores_c"], ["scores"]),
             _const("labels_c", np.asarray(labels, np.int64)), helper.make_node("Identity", ["labels_c"], ["labels"])]
    inputs = [helper.make_tensor_value_info("image", TensorProto.FLOAT, [3, "height", "width"])]
    outputs = [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [n, 4]),
               helper.make_tensor_value_info("scores", TensorProto.FLOAT, [n]),
               helper.make_tensor_value_info("labels", TensorProto.INT64, [n])]
    return _save(path, nodes, inputs, outputs, names)


def record(w, h, value=100, name="img.jpg"):
    return ImageRecord(name, np.full((h, w, 3), value, np.uint8))


def ultralytics_scale_boxes(boxes, img0_hw):
    """Ultralytics' ops.scale_boxes from a S x S letterboxed input back to ``img0_hw`` (restated for the check)."""
    gain = min(S / img0_hw[0], S / img0_hw[1])
    pad = (round((S - round(img0_hw[1] * gain)) / 2 - 0.1), round((S - round(img0_hw[0] * gain)) / 2 - 0.1))
    b = np.asarray(boxes, np.float64).copy()
    b[:, [0, 2]] -= pad[0]
    b[:, [1, 3]] -= pad[1]
    b /= gain
    b[:, [0, 2]] = b[:, [0, 2]].clip(0, img0_hw[1])
    b[:, [1, 3]] = b[:, [1, 3]].clip(0, img0_hw[0])
    return b


# Anchors (cx, cy, w, h at the 64 px input, then the 3 class scores):
ANCHORS = np.array([
    [32, 32, 32, 16, 0.0, 0.9, 0.0],   # dog 0.9
    [33, 32, 32, 16, 0.0, 0.8, 0.0],   # dog 0.8, IoU ~0.94 with the first: suppressed by NMS
    [33, 32, 32, 16, 0.0, 0.0, 0.6],   # bird 0.6, same box: another class, kept (class-wise NMS)
    [10, 20, 8, 8, 0.3, 0.0, 0.0],     # cat 0.3: over the default 0.25
    [50, 50, 30, 40, 0.1, 0.0, 0.0],   # cat 0.1: under it; spills past the image's bottom
] + [[0] * 7] * 11, np.float32)  # 16 anchors: [1, 7, 16], more anchors than channels as in real exports


@pytest.fixture(scope="module")
def yolov8(tmp_path_factory):
    return yolo_graph(tmp_path_factory.mktemp("onnx") / "yolov8.onnx", ANCHORS)


def test_letterbox_is_ultralytics(tmp_path):
    out, r, pad = letterbox(np.full((100, 200, 3), 50, np.uint8)[:, :, ::-1], (S, S))  # a flipped view too
    assert out.shape == (S, S, 3) and r == pytest.approx(0.32) and pad == (0, 16)
    assert (out[:16] == 114).all() and (out[48:] == 114).all() and (out[16:48] == 50).all()
    out, r, pad = letterbox(np.zeros((37, 23, 3), np.uint8), (S, S))  # resized to 40 x 64: 12 px each side
    assert out.shape == (S, S, 3) and pad == (12, 0) and (out[:, :12] == 114).all() and (out[:, 52:] == 114).all()


def test_yolov8_boxes_come_back_onto_the_original_image(yolov8):
    det = build_first_stage(f"onnx:{yolov8}")
    assert det.layout.format == "yolov8" and det.layout.num_classes == 3 and det.class_names == NAMES
    d = det.detect([record(200, 100)])[0]
    # dog 0.9, bird 0.6 (the 0.8 dog is suppressed), cat 0.3; the 0.1 cat is under the threshold
    assert [NAMES[c] for c in d.classes] == ["dog", "bird", "cat"]
    np.testing.assert_allclose(d.scores, [0.9, 0.6, 0.3], atol=1e-6)
    xyxy = ANCHORS[[0, 2, 3], :4].copy()
    xyxy[:, :2] -= xyxy[:, 2:] / 2
    xyxy[:, 2:] += xyxy[:, :2]
    np.testing.assert_allclose(d.boxes, ultralytics_scale_boxes(xyxy, (100, 200)), atol=1e-4)
    np.testing.assert_allclose(d.boxes[0], [50, 25, 150, 75], atol=1e-4)  # (16, 24, 48, 40) - pad 16, / 0.32
    assert d.boxes.dtype == np.float32 and d.classes.dtype == np.int64


def test_thresholds_and_clipping(yolov8):
    low = OnnxDetector(yolov8, score_thresh=0.05).detect([record(200, 100)])[0]
    np.testing.assert_allclose(sorted(low.scores), [0.1, 0.3, 0.6, 0.9], atol=1e-6)
    clipped = low.boxes[np.argmin(low.scores)]
    assert clipped[3] == pytest.approx(100.0) and (low.boxes[:, [0, 2]] <= 200).all()  # clipped to the image
    high = OnnxDetector(yolov8, score_thresh=0.5).detect([record(200, 100)])[0]
    assert [NAMES[c] for c in high.classes] == ["dog", "bird"]


def test_batching_equals_one_at_a_time(tmp_path):
    dyn = np.zeros_like(ANCHORS)
    dyn[:, 4:] = ANCHORS[:, 4:] * 0.8  # scores rise with the (letterboxed) image's mean: images differ
    path = yolo_graph(tmp_path / "dyn.onnx", ANCHORS * [1, 1, 1, 1, 0.5, 0.5, 0.5], dyn)
    det = OnnxDetector(path)  # 0.25: the cat (0.15 + 0.24 x mean) passes on the brighter images only
    recs = [record(200, 100, 10), record(90, 160, 250), record(64, 64, 128), record(300, 120, 0)]
    batched = det.detect(recs)
    single = [det.detect([r])[0] for r in recs]
    for b, s in zip(batched, single):
        np.testing.assert_allclose(b.boxes, s.boxes, atol=1e-5)
        np.testing.assert_allclose(b.scores, s.scores, atol=1e-6)
        assert (b.classes == s.classes).all()
    assert len({len(b) for b in batched}) > 1  # the images really gave different detections
    fixed = OnnxDetector(yolo_graph(tmp_path / "b1.onnx", ANCHORS, batch=1))  # a static batch of 1
    assert fixed.layout.fixed_batch == 1 and len(fixed.detect(recs)) == 4


def test_yolov5_objectness_times_class_probability(tmp_path):
    # cx, cy, w, h, objectness, 3 class probabilities
    rows = [[32, 32, 32, 16, 0.9, 0.1, 0.8, 0.1],   # dog 0.72
            [32, 32, 32, 16, 0.2, 0.9, 0.1, 0.0],   # objectness 0.2 < 0.25: dropped before the classes
            [10, 10, 8, 8, 0.5, 0.6, 0.2, 0.2]]     # cat 0.30
    det = OnnxDetector(yolo_graph(tmp_path / "v5.onnx", rows, layout="yolov5"))
    assert det.layout.format == "yolov5" and det.layout.num_classes == 3
    d = det.detect([record(64, 64)])[0]
    assert [NAMES[c] for c in d.classes] == ["dog", "cat"]
    np.testing.assert_allclose(d.scores, [0.72, 0.30], atol=1e-6)
    np.testing.assert_allclose(d.boxes[0], [16, 24, 48, 40], atol=1e-4)  # a 64 px image: no letterbox change


def test_boxes_layout_letterboxed_and_rtdetr_and_torchvision_export(tmp_path):
    boxes = [[16, 24, 48, 40], [0, 0, 8, 8]]
    det = OnnxDetector(boxes_graph(tmp_path / "e2e.onnx", boxes, [0.9, 0.1], [1, 2]))
    assert det.layout.format == "boxes" and det.class_names == NAMES
    d = det.detect([record(200, 100)])[0]
    assert d.classes.tolist() == [1] and np.allclose(d.boxes, [[50, 25, 150, 75]])
    rel = [[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.1, 0.1]]
    rt = OnnxDetector(boxes_graph(tmp_path / "rtdetr.onnx", rel, [0.9, 0.5], [0, 2], size_input=True))
    assert rt.layout.size_input == "orig_target_sizes"
    d = rt.detect([record(200, 100)])[0]  # sizes fed as (w, h): boxes in original pixels
    np.testing.assert_allclose(d.boxes, [[50, 50, 150, 100], [0, 0, 20, 10]], atol=1e-4)
    assert d.classes.tolist() == [0, 2]
    tv = OnnxDetector(torchvision_like_graph(tmp_path / "tv.onnx", rel, [0.9, 0.5], [0, 2]), score_thresh=0.6)
    assert tv.layout.input_rank == 3
    got = tv.detect([record(200, 100), record(50, 80)])  # the original images go in, one at a time
    np.testing.assert_allclose(got[0].boxes, [[50, 50, 150, 100]], atol=1e-4)
    np.testing.assert_allclose(got[1].boxes, [[12.5, 40, 37.5, 80]], atol=1e-4)


def test_class_names_from_categories_and_the_format_flag(tmp_path):
    path = yolo_graph(tmp_path / "nonames.onnx", ANCHORS, names=None)
    with pytest.raises(UsageError, match="no 'names' metadata.*--categories"):
        OnnxDetector(path)
    assert OnnxDetector(path, categories=["a", "b", "c"]).class_names == ["a", "b", "c"]
    with pytest.raises(UsageError, match="output has 3 classes but --categories names 4"):
        OnnxDetector(path, categories=["a", "b", "c", "d"])
    with pytest.raises(UsageError, match="output has 3 classes but its 'names' metadata names 2"):
        OnnxDetector(yolo_graph(tmp_path / "two.onnx", ANCHORS, names=["x", "y"]))
    with pytest.raises(UsageError, match="unknown layout; supported: yolov8 .*yolov5 .*boxes"):
        OnnxDetector(path, categories=NAMES, detector_format="yolox")
    # --detector-format is taken as said: this [1, 7, 16] output read as yolov5 has 16 - 5 = 11 classes
    with pytest.raises(UsageError, match="the yolov5 output has 11 classes but --categories names 3"):
        OnnxDetector(path, categories=NAMES, detector_format="yolov5")
    with pytest.raises(UsageError, match="layout boxes needs outputs named boxes, scores and labels"):
        OnnxDetector(path, categories=NAMES, detector_format="boxes")


def test_bad_files_are_clear_errors(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"this is not a protobuf")
    with pytest.raises(UsageError, match=r"junk.onnx: not an ONNX model"):
        OnnxDetector(junk)
    with pytest.raises(UsageError, match="no such file"):
        build_first_stage(f"onnx:{tmp_path / 'missing.onnx'}")
    nodes = []
    _image_mean(nodes, [1, 1])
    nodes += [_const("w", np.ones((1, 10), np.float32)), helper.make_node("Mul", ["m", "w"], ["logits"])]
    clf = _save(tmp_path / "classifier.onnx", nodes,
                [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, S, S])],
                [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])])
    with pytest.raises(UsageError, match=r"classifier.onnx: not a detector layout .*logits \[1, 10\].*--detector-format"):
        OnnxDetector(clf)
    with pytest.raises(ValueError, match="applies to onnx: detectors only"):
        build_first_stage(f"gt:{tmp_path / 'x.json'}", detector_format="yolov8")


def test_infer_tool_runs_an_onnx_detector_with_the_demo_classifier(tmp_path, capsys):
    from crop_classifier.data import generate_scenes
    from crop_classifier.data.synthetic import SYNTHETIC_CLASSES

    ann = Path(generate_scenes(tmp_path / "scenes", 2, seed=5, image_size=128, split_name="test"))
    names = list(SYNTHETIC_CLASSES)
    anchors = np.zeros((32, 4 + len(names)), np.float32)  # 2 live anchors, 30 empty ones
    anchors[0, :4], anchors[0, 4 + 3] = [20, 20, 24, 24], 0.9   # circle_rings
    anchors[1, :4], anchors[1, 4 + 6] = [44, 40, 30, 20], 0.7   # square_dots
    onnx_path = yolo_graph(tmp_path / "det.onnx", anchors, names=names)
    out = tmp_path / "out"
    infer = load_tool("infer")
    rc = infer.main(["--detector", f"onnx:{onnx_path}", "--classifier-weights", str(ROOT / "demo_weights" / "classifier.pth"),
                     "--input", str(ann.parent / "images"), "--output", str(out), "--no-progress", "--vis-limit", "0",
                     "--device", "cpu", "--eval", str(ann)])
    assert rc == 0
    dets = json.loads((out / "detector_predictions.json").read_text())
    preds = json.loads((out / "predictions.json").read_text())
    assert len(dets) == 4 and len(preds) == 4  # 2 boxes on each of the 2 images
    # the 64 px input is the 128 px image at ratio 0.5, no padding: box (8, 8, 32, 32) -> (16, 16, 64, 64)
    first = sorted((d for d in dets if d["score"] > 0.8), key=lambda d: d["file_name"])[0]
    assert first["bbox"] == pytest.approx([16, 16, 48, 48], abs=1e-3)
    assert all(p["cls_score"] is not None for p in preds)
    assert json.loads((out / "summary.json").read_text())["images"] == 2

    # bad input: a --categories class count that disagrees with the layout is one line, exit 2, nothing written
    cats = tmp_path / "three.json"
    cats.write_text(json.dumps({"images": [], "annotations": [],
                                "categories": [{"id": i + 1, "name": n} for i, n in enumerate(NAMES)]}))
    bad_out = tmp_path / "bad"
    rc = infer.main(["--detector", f"onnx:{yolo_graph(tmp_path / 'nn.onnx', anchors, names=None)}",
                     "--classifier-weights", str(ROOT / "demo_weights" / "classifier.pth"), "--input",
                     str(ann.parent / "images"), "--output", str(bad_out), "--no-progress", "--device", "cpu",
                     "--categories", str(cats)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and not bad_out.exists()
    assert err == [f"error: onnx:{tmp_path / 'nn.onnx'}: the yolov8 output has 12 classes but --categories names 3"]
