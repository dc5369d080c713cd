"""tools/infer.py on every classifier runtime: ONNX Runtime, OpenVINO, an exported file and an int8 checkpoint
give the torch backend's predictions (same boxes and classes, scores within 1e-3; int8: close), on held-out
synthetic scenes with the demo classifier."""
import json
import shutil
from pathlib import Path

import pytest

from tool_loader import load_tool

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from crop_classifier.data import generate_scenes

    tmp = tmp_path_factory.mktemp("backends")
    ann = Path(generate_scenes(tmp / "scenes", 5, seed=777, split_name="test"))
    ckpt = tmp / "classifier.pth"  # a copy: the ONNX export is cached beside the checkpoint
    shutil.copy(ROOT / "demo_weights" / "classifier.pth", ckpt)
    return ann, ckpt, tmp


def _run(setup, name, *extra):
    ann, ckpt, tmp = setup
    out = tmp / name
    rc = load_tool("infer").main(["--detector", f"gt:{ann}", "--classifier-weights", str(ckpt), "--input",
                                  str(ann.parent / "images"), "--output", str(out), "--no-progress", "--vis-limit",
                                  "0", "--device", "cpu", *extra])
    assert rc == 0
    return {(p["file_name"], tuple(p["bbox"])): p for p in json.loads((out / "predictions.json").read_text())}


def _same(a, b, tol):
    assert a.keys() == b.keys() and len(a) >= 20
    classes = sum(a[k]["category_id"] == b[k]["category_id"] for k in a) / len(a)
    diff = max(abs(a[k]["score"] - b[k]["score"]) for k in a)
    return classes, diff


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_runtimes_give_the_torch_predictions(setup, backend):
    pytest.importorskip(backend)
    ref = _run(setup, "torch", "--backend", "torch")
    got = _run(setup, backend, "--backend", backend)
    classes, diff = _same(ref, got, 1e-3)
    assert classes == 1.0 and diff <= 1e-3
    summary = json.loads((setup[2] / backend / "summary.json").read_text())
    assert f"on {backend}" in summary["classifier_runtime"]


def test_exported_file_alone_runs_the_second_stage(setup):
    pytest.importorskip("onnxruntime")
    ann, ckpt, tmp = setup
    onnx = tmp / "exported.onnx"
    assert load_tool("export").main(["--weights", str(ckpt), "--format", "onnx", "--output", str(onnx)]) == 0
    ref = _run(setup, "torch2", "--backend", "torch")
    got = _run((ann, onnx, tmp), "onnx_file")
    classes, diff = _same(ref, got, 1e-3)
    assert classes == 1.0 and diff <= 1e-3


def test_int8_checkpoint_runs_through_infer(setup):
    ann, ckpt, tmp = setup
    int8 = tmp / "int8.pth"
    rc = load_tool("quantize").main(["--weights", str(ckpt), "--output", str(int8), "--calib-dataset",
                                     f"coco:{ann}:{ann.parent}", "--calib-crops", "32"])
    assert rc == 0
    ref = _run(setup, "torch3", "--backend", "torch")
    got = _run((ann, int8, tmp), "int8", "--precision", "int8")
    classes, _ = _same(ref, got, None)
    assert classes >= 0.8  # int8 changes some decisions; its accuracy is measured in docs/benchmarks.md
    # an int8 checkpoint on another runtime, or fp16 on CPU: one line, exit 2
    infer = load_tool("infer")
    base = ["--detector", f"gt:{ann}", "--input", str(ann.parent / "images"), "--output", str(tmp / "x"),
            "--no-progress", "--device", "cpu"]
    assert infer.main(base + ["--classifier-weights", str(int8), "--backend", "onnxruntime"]) == 2
    assert infer.main(base + ["--classifier-weights", str(ckpt), "--precision", "fp16"]) == 2


def test_cpu_streams_give_the_same_predictions(setup):
    ref = _run(setup, "torch4", "--backend", "torch")
    got = _run(setup, "streams", "--backend", "torch", "--cpu-streams", "2")
    classes, diff = _same(ref, got, 1e-5)
    assert classes == 1.0 and diff <= 1e-5
    assert _run(setup, "default") .keys() == ref.keys()  # no flags: the default CPU runtime, same boxes
