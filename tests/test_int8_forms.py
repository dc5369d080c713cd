"""int8 as an ONNX file (tools/quantize.py --format onnx|openvino): calibrated like FX int8, its meta inside,
recognised as int8 by load_classifier (precision reporting), run on OpenVINO by default, ONNX Runtime on
request; bad combinations are one-line usage errors."""
import importlib.util

import pytest
import torch

from classifier_helpers import spread_weights
from crop_classifier.data.synthetic import SYNTHETIC_CLASSES
from crop_classifier.deploy import describe, load_classifier
from crop_classifier.deploy import loader as loader_mod
from crop_classifier.deploy.int8_onnx import with_meta, saturation_risk
from crop_classifier.deploy.runtimes import OnnxRuntimeClassifier, OpenVinoClassifier, onnx_is_int8, read_onnx_meta
from crop_classifier.errors import UsageError
from crop_classifier.models import build_classifier, model_meta, save_checkpoint
from crop_classifier.models.inference import load_inference_classifier
from tool_loader import load_tool

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")
CLASSES = list(SYNTHETIC_CLASSES)  # calibrated and evaluated on synthetic scenes
HAVE_OV = importlib.util.find_spec("openvino") is not None


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("int8")
    model = spread_weights(build_classifier("v3_79", len(CLASSES), width=0.0625, aux_logits=False), seed=5)
    ckpt = d / "clf.pth"
    save_checkpoint(ckpt, model, model_meta(model, "v3_79", CLASSES, context=0.1, mode="square"))
    return {"dir": d, "ckpt": ckpt, "data": f"synthetic:{d / 'train'}:2:0", "held_out": f"synthetic:{d / 'val'}:1:1"}


def quantize(setup, name, *extra):
    out = setup["dir"] / name
    rc = load_tool("quantize").main(["--weights", str(setup["ckpt"]), "--output", str(out), "--calib-dataset",
                                     setup["data"], "--calib-crops", "16", "--eval-dataset", setup["held_out"], *extra])
    return rc, out


def test_onnx_qdq_int8_file_loads_as_int8_and_matches_fp32_decisions(setup, capsys):
    rc, out = quantize(setup, "q.onnx")  # the suffix picks --format onnx
    assert rc == 0 and "int8 .onnx, onnx" in capsys.readouterr().out
    meta = read_onnx_meta(out)
    assert meta.extra["quantized"] == "onnx-qdq-int8" and onnx_is_int8(out)
    assert meta.extra["quantization"]["calib_datasets"] == [setup["data"]] and list(meta.class_names) == CLASSES
    result = meta.extra["quantization"]["eval"]
    assert result["crops"] > 0 and set(result["top1"]) == {"fp32", "int8"} and result["agreement"]["fp32"] == 1.0
    clf = load_classifier(out)
    assert clf.form["precision"] == "int8" == clf.precision and "int8" in describe(clf)
    assert clf.form["backend"] == ("openvino" if HAVE_OV else "onnxruntime")
    ort = load_classifier(out, "onnxruntime", precision="int8")
    assert isinstance(ort, OnnxRuntimeClassifier) and ort.form["precision"] == "int8"
    x = torch.rand(8, 3, 79, 79, generator=torch.Generator().manual_seed(3))
    ref = load_inference_classifier(setup["ckpt"])(x)
    for c in (clf, ort):  # int8 rounding moves probabilities a little, not wholesale
        p = c(x)
        assert p.shape == (8, len(CLASSES)) and torch.allclose(p.sum(1), torch.ones(8), atol=1e-4)
        assert (p - ref).abs().max() < 0.25 and (p.argmax(1) == ref.argmax(1)).float().mean() >= 0.5


def test_qdq_weights_are_7_bit_and_older_files_say_why_to_requantize(setup, tmp_path, monkeypatch):
    """Without VNNI, x86 int8 kernels sum u8 x s8 pairs in int16: full-range weights saturate there. The QDQ file
    is written with 7-bit weights; a file without them runs, and says on such a CPU why to re-quantize it."""
    rc, out = quantize(setup, "q7.onnx")
    meta = read_onnx_meta(out)
    assert rc == 0 and meta.extra["quantization"]["reduce_range"] is True
    no_vnni = {"AVX2": True, "AVX-512": False, "BF16": False, "VNNI": False, "AMX": False}
    assert saturation_risk(meta, no_vnni) is None
    old = meta.to_dict()
    old["quantization"] = {k: v for k, v in old["quantization"].items() if k != "reduce_range"}
    older = tmp_path / "older.onnx"
    older.write_bytes(with_meta(out.read_bytes(), old))
    risk = saturation_risk(read_onnx_meta(older), no_vnni)
    assert risk and "tools/quantize.py --format onnx" in risk
    assert saturation_risk(read_onnx_meta(older), {**no_vnni, "VNNI": True}) is None
    monkeypatch.setattr(loader_mod, "cpu_features", lambda: no_vnni)
    assert risk in load_classifier(older, "onnxruntime").form["reason"]
    assert "saturate" not in load_classifier(out, "onnxruntime").form["reason"]


@pytest.mark.skipif(not (HAVE_OV and importlib.util.find_spec("nncf")), reason="needs openvino and nncf")
def test_nncf_int8_file_runs_on_openvino(setup):
    rc, out = quantize(setup, "n.onnx", "--format", "openvino")
    assert rc == 0 and read_onnx_meta(out).extra["quantized"] == "nncf-qdq-int8"
    clf = load_classifier(out)
    assert isinstance(clf, OpenVinoClassifier) and clf.form["precision"] == "int8"
    assert clf(torch.rand(2, 3, 79, 79)).shape == (2, len(CLASSES))


def test_bad_int8_combinations_are_usage_errors(setup, capsys, tmp_path):
    tool = load_tool("quantize")
    assert tool.main(["--weights", str(setup["ckpt"]), "--output", str(tmp_path / "q.pth"), "--format", "onnx",
                      "--calib-dataset", setup["data"]]) == 2
    assert "writes an int8 .onnx" in capsys.readouterr().err
    assert tool.main(["--weights", str(setup["ckpt"]), "--output", str(tmp_path / "q.onnx"), "--format", "fx",
                      "--calib-dataset", setup["data"]]) == 2
    assert ".pth files" in capsys.readouterr().err
    fp32 = load_classifier(setup["ckpt"], "onnxruntime", precision="fp32")
    with pytest.raises(UsageError, match="fp32 ONNX file"):
        load_classifier(fp32.path, precision="int8")
    assert not onnx_is_int8(fp32.path) and load_classifier(fp32.path, precision="fp32").form["precision"] == "fp32"
