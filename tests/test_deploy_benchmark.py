"""``tools/benchmark.py --only deploy``: every runtime row present, timed, agreeing with the fp32 form."""
import importlib.util
import json

import pytest
import torch

from crop_classifier.deploy.streams import StreamedClassifier
from crop_classifier.errors import UsageError
from crop_classifier.models import build_classifier
from crop_classifier.models.inference import build_inference_classifier
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
    for name, r in rows.items():
        assert r["crops_per_s"] > 0 and r["median_s"] > 0
        if name != "int8 (FX x86)":
            assert r["max_abs_dprob"] < 1e-4 and r["top1_agreement"] == 1.0, name
    md = (tmp_path / "benchmark.md").read_text()
    assert "## Deploy: runtimes side by side" in md
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
    with pytest.raises(UsageError, match="--streams 0"):
        StreamedClassifier(clf, streams=0)
