"""The default precision follows the hardware (deploy.forms): bf16 where the CPU has it natively, behind a
decisions guard checked once per checkpoint; fp32 elsewhere; every classifier says which form runs and why.

Native bf16 is simulated by monkeypatching ``cpu_has_native_bf16``: on a CPU without it bf16 runs emulated
(slow, numerically the same), so the models are width-reduced and the inputs tiny."""
import json
import logging

import pytest
import torch

from crop_classifier.deploy import describe, forms, int8_advice, load_classifier
from crop_classifier.deploy import loader as loader_mod
from crop_classifier.deploy.runtimes import OpenVinoClassifier
from crop_classifier.errors import UsageError
from crop_classifier.models import build_classifier, model_meta, save_checkpoint
from crop_classifier.models import inference as inf
from crop_classifier.models.inference import InferenceClassifier, load_inference_classifier
from crop_classifier.structures import ClassifierMeta

CLASSES = [f"c{i}" for i in range(5)]
HAVE_OV = loader_mod.installed("openvino")
HAVE_ORT = loader_mod.installed("onnxruntime")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    model = build_classifier("v3_79", len(CLASSES), width=0.0625, aux_logits=False).eval()
    path = tmp_path_factory.mktemp("ckpt") / "clf.pth"
    save_checkpoint(path, model, model_meta(model, "v3_79", CLASSES, context=0.1, mode="square"))
    return path


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CROP_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def native_bf16(monkeypatch, value):
    monkeypatch.setattr(inf, "cpu_has_native_bf16", lambda: value)


def counting_compare(monkeypatch, disagreement):
    calls = []

    def compare(fp32, bf16, meta, count=forms.GUARD_CROPS):
        calls.append((fp32, bf16))
        return {"crops": 200, "disagreement": disagreement, "max_abs_dprob": 0.01, "source": "200 synthetic crops"}
    monkeypatch.setattr(loader_mod, "compare_decisions", compare)
    return calls


def test_without_native_bf16_the_default_is_fp32_on_the_cpu_default(ckpt, cache, monkeypatch):
    native_bf16(monkeypatch, False)
    clf = load_classifier(ckpt)
    assert clf.form["precision"] == "fp32" and "no native bf16" in clf.form["reason"]
    assert clf.form["backend"] == ("onnxruntime" if HAVE_ORT else "torch") == getattr(clf, "backend", "torch")
    assert clf.form["reason"] in describe(clf) and "fp32" in describe(clf)
    with pytest.raises(UsageError, match="no native bf16"):
        load_classifier(ckpt, precision="bf16")
    with pytest.raises(UsageError, match="no native bf16"):
        load_classifier(ckpt, "openvino", precision="bf16")
    assert not (cache / forms.VERDICTS_FILE).exists()  # no bf16 form was built: nothing to guard


def test_native_bf16_runs_bf16_on_the_fastest_runtime_and_checks_once(ckpt, cache, monkeypatch):
    native_bf16(monkeypatch, True)
    calls = counting_compare(monkeypatch, 0.005)
    clf = load_classifier(ckpt)
    expected = "openvino" if HAVE_OV else "torch"
    assert clf.form["backend"] == expected and clf.form["precision"] == "bf16" == clf.precision
    assert "native bf16" in clf.form["reason"] and "keeps the decisions (0.5 % of 200" in clf.form["reason"]
    assert len(calls) == 1 and isinstance(calls[0][0], InferenceClassifier) and calls[0][0].precision == "fp32"
    verdicts = json.loads((cache / forms.VERDICTS_FILE).read_text())
    key = f"{loader_mod.checkpoint_digest(ckpt)}:{expected}:bf16"
    assert verdicts[key]["ok"] is True and verdicts[key]["disagreement"] == 0.005
    again = load_classifier(ckpt)  # the verdict is cached: no second check
    assert len(calls) == 1 and again.form == clf.form
    x = torch.rand(2, 3, 79, 79, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(clf(x).sum(1), torch.ones(2), atol=1e-3)  # still probabilities (bf16 emulated here)


def test_a_bf16_form_that_changes_decisions_falls_back_to_fp32_and_says_so(ckpt, cache, monkeypatch, caplog):
    native_bf16(monkeypatch, True)
    calls = counting_compare(monkeypatch, 0.03)
    with caplog.at_level(logging.WARNING, logger="crop_classifier.deploy.loader"):
        clf = load_classifier(ckpt, "torch")
    assert clf.form["precision"] == "fp32" == clf.precision and clf.form["backend"] == "torch"
    assert "would change 3.0 % of the top-1 decisions on 200 synthetic crops" in clf.form["reason"]
    assert "fp32 instead" in caplog.text and len(calls) == 1
    assert load_classifier(ckpt, "torch").form == clf.form and len(calls) == 1  # the refusal is cached too


def test_explicit_precisions_and_backends_on_a_bf16_cpu(ckpt, cache, monkeypatch):
    native_bf16(monkeypatch, True)
    counting_compare(monkeypatch, 0.0)
    if HAVE_ORT:  # ONNX Runtime has no bf16 convolutions: its auto form is fp32
        ort = load_classifier(ckpt, "onnxruntime")
        assert ort.form["precision"] == "fp32" and "ONNX Runtime" in ort.form["reason"]
        with pytest.raises(UsageError, match="^precision: bf16: the onnxruntime backend runs .* in fp32"):
            load_classifier(ckpt, "onnxruntime", precision="bf16")
    exact = load_classifier(ckpt, "torch", precision="fp32")
    assert exact.form == {"backend": "torch", "precision": "fp32", "reason": "precision fp32 asked for"}
    torch_bf16 = load_classifier(ckpt, "torch", precision="bf16")
    assert isinstance(torch_bf16, InferenceClassifier) and torch_bf16.precision == "bf16"
    x = torch.rand(3, 3, 79, 79, generator=torch.Generator().manual_seed(1))
    assert (torch_bf16(x) - exact(x)).abs().max() < 0.05  # bf16's 8 bits of mantissa, through a tiny net
    if HAVE_OV:
        ov = load_classifier(ckpt, "openvino", precision="bf16")
        assert isinstance(ov, OpenVinoClassifier) and ov.precision == "bf16" == ov.form["precision"]
        assert load_classifier(ckpt, precision="bf16").form["backend"] == "openvino"  # the fastest bf16 runtime


def test_compare_decisions_counts_changed_top1_on_deterministic_crops(ckpt):
    meta = ClassifierMeta.from_dict(torch.load(ckpt, weights_only=True)["meta"])
    a, source = forms.guard_crops(meta, 79, 40)
    b, _ = forms.guard_crops(meta, 79, 40)
    assert a.shape == (40, 3, 79, 79) and torch.equal(a, b) and "synthetic" in source
    assert 0.0 <= float(a.min()) and float(a.max()) <= 1.0 and a.std() > 0.05  # real pictures, not blanks
    clf = load_inference_classifier(ckpt)
    same = forms.compare_decisions(clf, clf, meta, 40)
    assert same["disagreement"] == 0.0 and same["crops"] == 40 and same["max_abs_dprob"] == 0.0

    class Colour:  # answers by the crop's mean colour: decisions that depend on the crop (a random net's do not)
        meta, device = clf.meta, clf.device
        weights = torch.randn(3, len(CLASSES), generator=torch.Generator().manual_seed(0)) * 50

        def __call__(self, x, shift=0):
            return torch.softmax(x.mean((2, 3)) @ self.weights, 1).roll(shift, dims=1)

    class Shifted(Colour):  # the same with its classes rotated: every decision changes
        def __call__(self, x):
            return super().__call__(x, 1)
    assert len(set(Colour()(a).argmax(1).tolist())) > 1
    assert forms.compare_decisions(Colour(), Colour(), meta, 40)["disagreement"] == 0.0
    assert forms.compare_decisions(Colour(), Shifted(), meta, 40)["disagreement"] == 1.0


def test_guard_uses_recorded_held_out_crops_when_they_load(tmp_path):
    from crop_classifier.data import generate_scenes

    generate_scenes(tmp_path / "test", 2, seed=3, split_name="test")
    meta = ClassifierMeta.from_dict({"arch": "v3_79", "class_names": CLASSES, "input_size": 79,
                                     "held_out_datasets": [f"synthetic:{tmp_path}/test:2:3"]})
    x, source = forms.guard_crops(meta, 79, 500)
    assert source.startswith(f"{len(x)} held-out crops of synthetic:") and len(x) > 0
    missing = ClassifierMeta.from_dict({**meta.to_dict(), "held_out_datasets": ["coco:/nowhere/a.json:/nowhere"]})
    assert "synthetic crops" in forms.guard_crops(missing, 79, 8)[1]


def test_int8_advice_on_cpus_with_int8_instructions(ckpt, monkeypatch):
    clf = load_classifier(ckpt, "torch", precision="fp32")
    monkeypatch.setattr(inf, "cpu_features", lambda: {"AVX2": True, "AVX-512": True, "BF16": False, "VNNI": True,
                                                       "AMX": False})
    assert "int8 is the fastest form on this CPU (VNNI)" in int8_advice(clf) and "tools/quantize.py" in int8_advice(clf)
    monkeypatch.setattr(inf, "cpu_features", lambda: dict.fromkeys(("AVX2", "AVX-512", "BF16", "VNNI", "AMX"), False))
    assert int8_advice(clf) is None


def test_cpu_features_read_the_flags(monkeypatch):
    monkeypatch.setattr(inf, "cpu_flags", lambda: ("fpu", "avx2", "avx512f", "avx512_vnni", "amx_tile", "amx_bf16"))
    assert inf.cpu_features() == {"AVX2": True, "AVX-512": True, "BF16": True, "VNNI": True, "AMX": True}
    monkeypatch.setattr(inf, "cpu_flags", lambda: ("fpu", "avx2"))
    assert inf.cpu_features() == {"AVX2": True, "AVX-512": False, "BF16": False, "VNNI": False, "AMX": False}
