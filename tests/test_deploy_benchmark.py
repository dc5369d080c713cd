"""``tools/benchmark.py --only deploy``: every runtime row present, timed, agreeing with the fp32 form."""
import importlib.util
import json

import pytest
import torch

from crop_classifier.deploy.streams import StreamedClassifier
from crop_classifier.errors import ParameterError, UsageError
from crop_classifier.models import build_classifier
from crop_classifier.models.inference import build_inference_classifier, cpu_has_native_bf16 as native_bf16
from crop_classifier.models.weights import model_meta
from tool_loader import load_tool


def test_deploy_section_tiny(tmp_path):
    rc = load_tool("benchmark").main(["--output", str(tmp_path), "--tiny", "--threads", "2", "--only", "deploy"])
    assert rc == 0
    result = json.loads((tmp_path / "benchmark.json").read_text())
    rows = {r["name"]: r for r in result["deploy"]["rows"]}
    expected = {"torch eager", "torch default (InferenceClassifier)", "torch 2x1 streams", "int8 (FX x86)"}
    runtimes = [n for n in ("onnxruntime", "openvino") if importlib.util.find_spec(n) and importlib.util.find_spec("onnx")]
    expected |= {f"{n} {layout}" for n in runtimes for layout in ("1x2", "2x1")}  # a core install has neither
    assert expected <= set(rows)
    assert rows["torch default (InferenceClassifier)"]["ratio_vs_default"] == 1.0
    if "onnxruntime" in runtimes:  # the int8 .onnx forms (NNCF's where nncf is installed)
        assert {"int8 ONNX QDQ on onnxruntime"} <= set(rows)
        assert ("int8 NNCF on openvino" in rows) == bool(importlib.util.find_spec("nncf") and "openvino" in runtimes)
    bf16 = native_bf16()
    assert ("torch bf16 autocast" in rows) == bf16  # bf16 rows only where the CPU has it natively
    for name, r in rows.items():
        assert r["crops_per_s"] > 0 and r["median_s"] > 0
        if r["precision"] == "fp32":
            assert r["max_abs_dprob"] < 1e-4 and r["top1_agreement"] == 1.0, name
        assert r["precision"] in ("fp32", "bf16", "int8"), name
    gemm = result["deploy"]["gemm"]
    assert gemm["fp32"]["gflops"] > 0 and ("bf16" in gemm) == bf16 and "int8" in gemm
    assert set(result["deploy"]["cpu_features"]) == {"AVX2", "AVX-512", "BF16", "VNNI", "AMX"}
    if result["deploy"]["gmacs_per_crop"] is not None:  # fvcore counts the cost (not in a core install)
        default = rows["torch default (InferenceClassifier)"]
        assert default["effective_gflops"] == pytest.approx(2 * result["deploy"]["gmacs_per_crop"] * 2 / default["median_s"])
        assert default["pct_of_gemm"] == pytest.approx(100 * default["effective_gflops"] / gemm["fp32"]["gflops"])
    md = (tmp_path / "benchmark.md").read_text()
    assert "## Deploy: runtimes side by side" in md and "features: AVX2 " in md and "% GEMM" in md
    assert ("| onnxruntime 2x1 |" in md) == ("onnxruntime" in runtimes)


def test_streamed_classifier_matches_and_restores_threads():
    model = build_classifier("v3_79", 4, width=0.125, aux_logits=False).eval()
    clf = build_inference_classifier(model, model_meta(model, "v3_79", list("abcd")))
    x = torch.rand(5, 3, 79, 79)
    before = torch.get_num_threads()
    streamed = StreamedClassifier(clf, streams=2)
    assert torch.allclose(streamed(x), clf(x), atol=1e-6) and streamed(x[:1]).shape == (1, 4)
    assert torch.get_num_threads() == before
    assert streamed.class_names == list("abcd") and streamed.input_size == 79
    with pytest.raises(ParameterError, match="^streams: expected a positive integer, got 0"):
        StreamedClassifier(clf, streams=0)
