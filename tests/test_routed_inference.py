"""The routed classifier (``--classifier auto``) everywhere a classifier runs: tools/infer.py (routed
checkpoint, routed set of three checkpoints, --route-thresholds, per-route crop counts, bad values), the second
stage's per-route dispatch, ONNX Runtime (cached per route, and tools/export.py's one file per route), and the
Detectron2 plugin (ARCH auto, ROUTE_THRESHOLDS, routed WEIGHTS). Width 0.125 models, a few synthetic images."""
import json

import cv2
import numpy as np
import pytest
import torch

from crop_classifier.crops import extract_crops
from crop_classifier.deploy import cache_root, describe, load_classifier
from crop_classifier.errors import ParameterError, UsageError
from crop_classifier.models import build_classifier, model_meta, save_checkpoint
from crop_classifier.models.inference import RoutedClassifier, build_inference_classifier, load_inference_classifier
from crop_classifier.second_stage import SecondStage
from classifier_helpers import spread_weights
from tool_loader import load_tool
from numerics import assert_fp32_close

CLASSES = ["red", "green", "blue"]
CONTEXT = 0.1
# Box sides 40, 150, 400 px: native sides (x 1.2 with the context margin) 48, 180, 480 -> routes 79, 151, 299
# under the default thresholds (109.2, 212.5).
SIDES = (40, 150, 400)
SIZE_OF_SIDE = {40: 79, 150: 151, 400: 299}


def _routed_model(seed=0):
    torch.manual_seed(seed)
    return spread_weights(build_classifier("auto", len(CLASSES), width=0.125, aux_logits=False), seed)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A routed checkpoint, the same weights as three single-stem checkpoints, and two images with ground truth
    (each a box of every side) as a COCO file."""
    d = tmp_path_factory.mktemp("routed")
    model = _routed_model()
    meta = model_meta(model, "auto", CLASSES, context=CONTEXT, mode="square")
    routed = save_checkpoint(d / "routed.pth", model, meta)
    stems = []
    for arch in ("v3_299", "v3_79", "v3_151"):  # any order
        single = build_classifier(arch, len(CLASSES), width=0.125, aux_logits=False)
        single.load_state_dict(model.state_dict())
        stems.append(save_checkpoint(d / f"{arch}.pth", single, model_meta(single, arch, CLASSES, context=CONTEXT,
                                                                         mode="square")))
    images, anns = d / "images", []
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        img = rng.integers(0, 255, (520, 560, 3), dtype=np.uint8)
        cv2.imwrite(str(images / f"img{i}.png"), img)
        for k, side in enumerate(SIDES):
            x, y = 10 + 40 * i + 60 * k, 20 + 30 * k
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": k + 1, "bbox": [x, y, side, side],
                         "area": side * side, "iscrowd": 0})
    ann = d / "ann.json"
    ann.write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": f"img{i}.png", "height": 520, "width": 560} for i in range(2)],
        "annotations": anns, "categories": [{"id": k + 1, "name": n} for k, n in enumerate(CLASSES)]}))
    return {"dir": d, "routed": routed, "stems": stems, "images": images, "ann": ann}


def _infer(files, name, *extra):
    out = files["dir"] / name
    rc = load_tool("infer").main(["--detector", f"gt:{files['ann']}", "--input", str(files["images"]), "--output",
                                  str(out), "--no-progress", "--vis-limit", "0", "--device", "cpu", *extra])
    return rc, out


def _predictions(out):
    return {(p["file_name"], tuple(p["bbox"])): p for p in json.loads((out / "predictions.json").read_text())}


def _same(a, b, tol=1e-4):
    assert a.keys() == b.keys() and len(a) == 2 * len(SIDES)
    assert all(a[k]["category_id"] == b[k]["category_id"] for k in a)
    assert max(abs(a[k]["cls_score"] - b[k]["cls_score"]) for k in a) <= tol


@pytest.fixture(scope="module")
def torch_run(files):
    rc, out = _infer(files, "torch", "--classifier", "auto", "--classifier-weights", str(files["routed"]),
                     "--backend", "torch")
    assert rc == 0
    return out


def test_infer_routes_each_box_and_counts_crops_per_route(torch_run, files):
    s = json.loads((torch_run / "summary.json").read_text())
    assert s["crops"] == 6 and s["routes"]["crops"] == {"v3_79": 2, "v3_151": 2, "v3_299": 2}
    assert s["routes"]["thresholds"] == [109.2, 212.5] and s["classifier_runtime"].startswith("auto (v3_79")
    assert len(_predictions(torch_run)) == 6
    # Thresholds from the command line move every box to the middle route.
    rc, out = _infer(files, "moved", "--classifier", "auto", "--classifier-weights", str(files["routed"]),
                     "--backend", "torch", "--route-thresholds", "30,500")
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["routes"]["crops"] == {"v3_79": 0, "v3_151": 6, "v3_299": 0} and s["routes"]["thresholds"] == [30, 500]
    moved = _predictions(out)
    # Each box's score is the middle route's answer on its crop (written with 5 decimals). Comparing with the
    # default run's scores instead passed on torch 2.3 by luck: with another torch's random init these
    # random-weight routes saturate alike, and their scores agree to 5 decimals.
    from crop_classifier.data import read_rgb

    middle = load_inference_classifier(files["routed"]).route(151)
    for (name, (x, y, w, h)), p in moved.items():
        image = torch.from_numpy(read_rgb(name)).permute(2, 0, 1)
        crop = extract_crops(image, torch.tensor([[x, y, x + w, y + h]]), 151, context=CONTEXT, mode="square")
        assert abs(p["cls_score"] - float(middle(crop)[0, CLASSES.index(p["category_name"])])) <= 2e-5, name


def test_three_checkpoints_as_a_routed_set_match_the_routed_checkpoint(torch_run, files):
    rc, out = _infer(files, "set", "--classifier", "auto", "--classifier-weights", ",".join(map(str, files["stems"])),
                     "--backend", "torch", "--cpu-streams", "2")
    assert rc == 0
    _same(_predictions(torch_run), _predictions(out), 1e-5)
    assert json.loads((out / "summary.json").read_text())["routes"]["crops"] == {"v3_79": 2, "v3_151": 2, "v3_299": 2}


def test_onnxruntime_runs_the_routed_checkpoint_per_route(torch_run, files):
    pytest.importorskip("onnxruntime")
    rc, out = _infer(files, "ort", "--classifier", "auto", "--classifier-weights", str(files["routed"]),
                     "--backend", "onnxruntime")
    assert rc == 0
    _same(_predictions(torch_run), _predictions(out))
    cached = sorted(p.name.split(".")[-2] for p in (cache_root() / "onnx").glob("routed-*.onnx"))
    assert cached == ["v3_151", "v3_299", "v3_79"]  # one export per route, in the cache folder
    assert not list(files["dir"].glob("*.onnx"))  # nothing beside the checkpoint
    assert "on onnxruntime" in json.loads((out / "summary.json").read_text())["classifier_runtime"]


@pytest.mark.parametrize("extra,needle", [
    (["--route-thresholds", "abc"], "--route-thresholds 'abc'"),
    (["--route-thresholds", "212,109"], "--route-thresholds"),
    (["--route-thresholds", "109"], "--route-thresholds"),
    (["--precision", "int8"], "tools/quantize.py"),
])
def test_bad_routed_values_are_one_line_usage_errors(files, capsys, extra, needle):
    rc, out = _infer(files, "bad", "--classifier", "auto", "--classifier-weights", str(files["routed"]),
                     "--backend", "torch", *extra)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and needle in err[0], err
    assert not (out / "predictions.json").exists()


def test_bad_routed_sets_are_usage_errors(files, tmp_path, capsys):
    stems = [str(p) for p in files["stems"]]
    other = build_classifier("v3_79", 2, width=0.125, aux_logits=False)
    odd = save_checkpoint(tmp_path / "odd.pth", other, model_meta(other, "v3_79", ["a", "b"], context=CONTEXT))
    for extra, needle in (
        (["--classifier-weights", ",".join(stems)], "--classifier: 3 files make a routed set (auto), not v3_79"),
        (["--classifier", "auto", "--classifier-weights", f"{stems[0]},{stems[0]}"], "each stem at most once"),
        (["--classifier", "auto", "--classifier-weights", f"{stems[0]},{odd}"], "share their classes"),
        (["--classifier", "auto", "--classifier-weights", f"{stems[0]},{files['routed']}"], "single-stem files"),
        (["--classifier-weights", str(files["routed"])], "auto"),  # a routed checkpoint names its arch
        (["--classifier", "v3_79", "--classifier-weights", stems[1], "--route-thresholds", "100,200"],
         "--route-thresholds"),
        (["--classifier", "auto", "--classifier-weights", f"{stems[0]},{tmp_path / 'nope.pth'}"], "no such file"),
    ):
        rc, _ = _infer(files, "badset", "--backend", "torch", *extra)
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], (extra, err)
    from crop_classifier.deploy.export import export_checkpoint
    from crop_classifier.deploy.quantize import CalibrationOptions, quantize_checkpoint

    with pytest.raises(UsageError, match="one file per route"):  # the single-file API refuses, naming the way
        export_checkpoint(files["routed"], tmp_path / "x.onnx")
    with pytest.raises(UsageError, match="quantized per route"):
        quantize_checkpoint(files["routed"], tmp_path / "x.pth", CalibrationOptions(["unused"]))
    assert not list(tmp_path.glob("x*"))


def test_int8_per_route_runs_routed(tmp_path):
    """A routed checkpoint quantized per route (each stem's view of the shared weights, its own activation ranges)
    loads back as a routed set, found by the output name tools/quantize.py was given. int8 conversion is slow
    (seconds per route), so only the small route is quantized here; the large one stays fp32 (a set may mix)."""
    from crop_classifier.deploy.quantize import CalibrationOptions, encode_state, int8_meta, quantize_model, route_views
    from crop_classifier.structures import ClassifierMeta
    from crop_classifier.utils.io import atomic_torch_save

    torch.manual_seed(0)
    model = spread_weights(build_classifier("auto", 3, width=0.125, aux_logits=False, routes=["v3_79", "v3_299"]))
    meta = ClassifierMeta.from_dict(model_meta(model, "auto", CLASSES, context=CONTEXT))
    (small, small_meta), (large, large_meta) = route_views(model, meta)
    assert (small_meta.arch, large_meta.arch, small_meta.input_size) == ("v3_79", "v3_299", 79)
    assert small_meta.extra["route_set"]["thresholds"] == [153.7] and "routes" not in small_meta.extra
    batches = iter([torch.rand(6, 3, 79, 79, generator=torch.Generator().manual_seed(1))])
    q = quantize_model(small, small_meta, batches, observer="minmax")
    atomic_torch_save(tmp_path / "q.v3_79.pth", {"model": encode_state(q.state_dict()),
                                                 "meta": int8_meta(small_meta, CalibrationOptions(["random"]))})
    save_checkpoint(tmp_path / "q.v3_299.pth", large, large_meta.to_dict())
    clf = load_classifier(tmp_path / "q.pth", "torch")
    assert isinstance(clf, RoutedClassifier) and clf.routes.archs == ("v3_79", "v3_299")
    assert clf.routes.thresholds == (153.7,) and "int8" in describe(clf)
    fp32 = build_inference_classifier(model, meta)
    image = torch.randint(0, 255, (3, 520, 560), dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 10, 50, 50], [10.0, 10, 410, 410]])
    got, want = (SecondStage(c, CLASSES).classify([image], [boxes])[0] for c in (clf, fp32))
    assert torch.allclose(got[1], want[1], atol=1e-5)  # the fp32 route: the routed form's own answer
    assert (got[0] - want[0]).abs().max() < 0.15  # the int8 route: close to it


def test_second_stage_sends_each_box_to_its_route(files):
    clf = load_inference_classifier(files["routed"])
    assert isinstance(clf, RoutedClassifier)
    calls = []
    for size, route in list(clf._by_size.items()):
        def spy(x, route=route, size=size):
            calls.append((size, int(x.shape[0]), int(x.shape[-1])))
            return route(x)
        clf._by_size[size] = spy
    stage = SecondStage(clf, CLASSES)
    image = torch.randint(0, 255, (3, 520, 560), dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 10, 10 + s, 10 + s] for s in SIDES])
    probs = stage.classify([image], [boxes])[0]
    assert sorted(calls) == [(79, 1, 79), (151, 1, 151), (299, 1, 299)]
    for i, side in enumerate(SIDES):
        size = SIZE_OF_SIDE[side]
        want = clf.route(size)(extract_crops(image, boxes[i:i + 1], size, context=CONTEXT).float())
        assert torch.allclose(probs[i:i + 1], want, atol=1e-6)


def test_export_tool_writes_one_file_per_route_and_they_load_back_routed(files, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "clf.onnx"
    assert load_tool("export").main(["--weights", str(files["routed"]), "--output", str(out),
                                     "--route-thresholds", "100,250"]) == 0
    assert "one file per route" in capsys.readouterr().out
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == ["clf.v3_151.onnx", "clf.v3_299.onnx", "clf.v3_79.onnx"]
    ref = load_inference_classifier(files["routed"])
    got = load_classifier(out)  # the export name finds its route files
    assert isinstance(got, RoutedClassifier) and got.routes.thresholds == (100.0, 250.0)  # recorded in the files
    assert got.class_names == CLASSES and got.crop.context == CONTEXT and got.meta.arch == "auto"
    for size in (79, 151, 299):  # ONNX Runtime per route = the torch routed form per route
        x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        want = ref.route(size).logits(x)
        assert want.std() > 0.5
        assert_fp32_close(got.route(size).logits(x), want, what=f"ONNX Runtime route {size} vs torch")
        assert got.route(size).meta.arch == {79: "v3_79", 151: "v3_151", 299: "v3_299"}[size]
    listed = load_classifier(",".join(str(tmp_path / n) for n in written), route_thresholds=[50, 60])
    assert listed.routes.thresholds == (50.0, 60.0) and listed.routes.archs == got.routes.archs
    single = tmp_path / "clf.v3_79.onnx"
    assert load_classifier(single).meta.arch == "v3_79"  # each file alone is a plain single-stem classifier
    with pytest.raises(ParameterError, match="^route_thresholds: .*single-stem"):
        load_classifier(single, route_thresholds=[100, 200])


# ---------------------------------------------------------------------------------------------- Detectron2
@pytest.mark.detectron2
def test_d2_arch_auto_route_thresholds_and_routed_weights(files):
    from detectron2.modeling import build_model
    from detectron2.structures import Boxes, Instances

    from crop_classifier.errors import ConfigError
    from d2_helpers import tiny_cfg

    torch.manual_seed(0)
    stage = build_model(tiny_cfg("MODEL.CROP_CLASSIFIER.ARCH", "auto", "MODEL.CROP_CLASSIFIER.WIDTH", 0.125))
    stage = stage.second_stage  # ARCH auto without WEIGHTS: a random routed classifier
    assert isinstance(stage.classifier, RoutedClassifier) and stage.routes.thresholds == (109.2, 212.5)
    weights = ["MODEL.CROP_CLASSIFIER.WEIGHTS", str(files["routed"]), "MODEL.CROP_CLASSIFIER.ARCH", None,
               "MODEL.CROP_CLASSIFIER.WIDTH", None, "MODEL.CROP_CLASSIFIER.CLASS_MAP", [["thing", "red,green,blue"]]]
    model = build_model(tiny_cfg(*weights, "MODEL.CROP_CLASSIFIER.ROUTE_THRESHOLDS", [100.0, 250.0])).eval()
    stage = model.second_stage
    assert stage.routes.thresholds == (100.0, 250.0) and stage.classifier.meta.arch == "auto"
    model.train()
    assert not stage.classifier.training  # the classifier stays an inference form
    model.eval()
    image = torch.randint(0, 255, (3, 520, 560), dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 10, 10 + s, 10 + s] for s in SIDES])
    inst = Instances((520, 560), pred_boxes=Boxes(boxes), pred_classes=torch.zeros(3, dtype=torch.long),
                     scores=torch.tensor([0.9, 0.8, 0.7]))
    out = model.second_stage_on([{"original_image": image}], [inst])[0]
    image = image.flip(0)  # INPUT.FORMAT BGR: the plugin crops the RGB image
    ref = load_inference_classifier(files["routed"])
    order = torch.argsort(out.det_scores, descending=True)
    for i, side in enumerate(SIDES):  # the meta-architecture's crops went to their routes
        size = SIZE_OF_SIDE[side]
        want = ref.route(size)(extract_crops(image, boxes[i:i + 1], size, context=CONTEXT).float())
        assert torch.allclose(out.cls_probs[order][i:i + 1], want, atol=1e-5)
    # Three single-stem checkpoints as WEIGHTS: a routed set, the same classifier.
    weights[1] = ",".join(map(str, files["stems"]))
    stage = build_model(tiny_cfg(*weights, "MODEL.CROP_CLASSIFIER.ARCH", "auto")).second_stage
    assert stage.routes.archs == ("v3_79", "v3_151", "v3_299") and stage.classifier.meta.arch == "auto"
    for bad, needle in (([109.0], "ROUTE_THRESHOLDS"), ([-1.0, 2.0], "ROUTE_THRESHOLDS: got")):
        with pytest.raises(ConfigError, match=needle):
            build_model(tiny_cfg(*weights, "MODEL.CROP_CLASSIFIER.ROUTE_THRESHOLDS", bad))
    # the loader's errors name its parameters; the plugin says which config key
    for key, value, needle in (("ROUTE_THRESHOLDS", [100.0, 200.0], "single-stem"), ("PRECISION", "fp16", "CPUs")):
        with pytest.raises(ConfigError, match=f"^MODEL.CROP_CLASSIFIER.{key}: .*{needle}"):
            build_model(tiny_cfg("MODEL.CROP_CLASSIFIER.WEIGHTS", str(files["stems"][1]),
                                 "MODEL.CROP_CLASSIFIER.WIDTH", None, "MODEL.CROP_CLASSIFIER." + key, value))


def test_tracking_loop_counts_crops_per_route(files):
    """Video: a routed second stage in the tracking loop reports the crops each route took (as infer's summary)."""
    pytest.importorskip("norfair")  # the tracker; the [video] extra installs it, the [test] extra does not
    from crop_classifier.video.loop import TrackingLoop, TrackOptions
    from crop_classifier.video.sources import Frame
    from crop_classifier.structures import ImageDetections

    class Fixed:  # a first stage returning the three boxes of SIDES, one of each route, every frame
        def detect(self, records):
            boxes = np.array([[10.0, 10, 10 + s, 10 + s] for s in SIDES], dtype=np.float32)
            return [ImageDetections(boxes, np.zeros(3, np.int64), np.full(3, 0.9, np.float32)) for _ in records]

    stage = SecondStage(load_inference_classifier(files["routed"]), CLASSES, class_map="*=*")
    loop = TrackingLoop(Fixed(), stage, TrackOptions(every_frame=True))
    image = np.random.default_rng(0).integers(0, 255, (520, 560, 3), dtype=np.uint8)
    for t in range(3):
        loop.step(Frame(t, image, t / 25))
    counters = loop.counters()
    assert counters["route_crops"] == {"v3_79": 3, "v3_151": 3, "v3_299": 3}
    assert sum(counters["route_crops"].values()) == counters["classifier_calls"] == 9
