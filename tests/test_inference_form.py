"""The one inference form (``models.inference``): parity with the plain model, precision rules, one path."""
import json
import copy
from pathlib import Path

import pytest
import torch

from crop_classifier.errors import ParameterError, UsageError
from crop_classifier.models import build_classifier, classifier_from_checkpoint, model_meta
from crop_classifier.models import inference as inf
from crop_classifier.structures import IMAGENET_MEAN, IMAGENET_STD
from numerics import assert_fp32_close, softmax_bound

ROOT = Path(__file__).resolve().parents[1]


def _normalised(x):
    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def _model_with_real_bn_statistics(seed=0):
    """BN statistics far from the init values, so folding them is a real change of every conv."""
    torch.manual_seed(seed)
    m = build_classifier("v3_79", 7, width=0.25, aux_logits=False)
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(8, 3, 79, 79) * 2 + 0.5)
    return m.eval()


def test_folded_form_matches_the_unfolded_model_within_1e4():
    m = _model_with_real_bn_statistics()
    meta = model_meta(m, "v3_79", [f"c{i}" for i in range(7)], context=0.1, mode="square")
    form = inf.build_inference_classifier(m, meta)
    assert not any(isinstance(x, torch.nn.BatchNorm2d) for x in form.net.modules())  # every BN folded
    assert any(isinstance(x, torch.nn.BatchNorm2d) for x in m.modules())  # the original is untouched
    x = torch.rand(16, 3, 79, 79)
    with torch.no_grad():  # float64: the reference without rounding of its own (tests/numerics.py)
        ref = copy.deepcopy(m).double()(_normalised(x).double())
    got = form.logits(x)
    assert ref.std() > 0.5  # logits spread over whole units: a wrong fold could not pass the bound
    assert_fp32_close(got, ref, what="folded form vs the model in float64")
    probs = form(x)
    assert (probs - torch.softmax(ref, 1)).abs().max() <= softmax_bound(ref)
    assert torch.equal(probs.argmax(1), ref.argmax(1))
    assert form.crop.size == 79 and form.crop.context == 0.1 and form.class_names[0] == "c0"
    assert form(torch.zeros(0, 3, 79, 79)).shape == (0, 7)


def test_form_stays_in_eval_mode_and_needs_no_gradients():
    form = inf.build_inference_classifier(_model_with_real_bn_statistics(), {"arch": "v3_79", "class_names": list("abcdefg"),
                                                                             "input_size": 79})
    form.train()
    assert not form.training and not form.net.training
    assert not any(p.requires_grad for p in form.parameters())


def test_demo_classifier_top1_identical_folded_and_unfolded_on_held_out_crops(tmp_path):
    """The shipped demo classifier on ground-truth crops of held-out synthetic scenes: same top-1 decisions."""
    from crop_classifier.crops import extract_crops
    from crop_classifier.data import generate_scenes, read_rgb

    model, meta = classifier_from_checkpoint(ROOT / "demo_weights" / "classifier.pth")
    model = model.float()
    form = inf.build_inference_classifier(model, meta)
    float64 = copy.deepcopy(model).double().eval()
    ann = json.loads(Path(generate_scenes(tmp_path / "scenes", 6, seed=4242, split_name="test")).read_text())
    crop = form.crop
    n, same = 0, 0
    for img in ann["images"]:
        image = torch.from_numpy(read_rgb(tmp_path / "scenes" / img["file_name"])).permute(2, 0, 1)
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in ann["annotations"] if a["image_id"] == img["id"]], dtype=torch.float32)
        x = extract_crops(image, boxes, crop.size, context=crop.context, mode=crop.mode)
        with torch.no_grad():
            ref = float64(_normalised(x).double())
        got = form.logits(x)
        assert_fp32_close(got, ref, what=img["file_name"])
        same += int((got.argmax(1) == ref.argmax(1)).sum())
        n += len(x)
    assert n >= 25 and same == n


def test_precision_rules(monkeypatch):
    assert inf.check_precision("fp32", "cpu") == "fp32"
    with pytest.raises(ParameterError, match="^precision: fp16"):
        inf.check_precision("fp16", "cpu")
    with pytest.raises(ParameterError, match="expected one of"):
        inf.check_precision("int4", "cpu")
    monkeypatch.setattr(inf, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(UsageError, match="no native bf16"):
        inf.check_precision("bf16", "cpu")
    monkeypatch.setattr(inf, "cpu_has_native_bf16", lambda: True)
    assert inf.check_precision("bf16", "cpu") == "bf16"


def test_bf16_form_agrees_with_fp32_where_the_cpu_has_bf16():
    if not inf.cpu_has_native_bf16():
        pytest.skip("this CPU has no native bf16 (AVX-512 BF16/AMX)")
    m = _model_with_real_bn_statistics(1)
    meta = {"arch": "v3_79", "class_names": list("abcdefg"), "input_size": 79}
    x = torch.rand(8, 3, 79, 79)
    p32 = inf.build_inference_classifier(m, meta)(x)
    p16 = inf.build_inference_classifier(m, meta, precision="bf16")(x)
    assert p16.dtype == torch.float32 and (p16 - p32).abs().max() < 0.05


def test_no_other_module_normalises_crops_or_folds_bn_for_inference():
    """One implementation: the inference form is the only code that builds the folded, normalising form."""
    pkg = ROOT / "crop_classifier"
    users = sorted(str(p.relative_to(pkg)) for p in pkg.rglob("*.py")
                   if "optimize_for_inference(" in p.read_text() or "fuse_conv_bn(" in p.read_text())
    assert users == ["models/fuse.py", "models/inference.py"], users
