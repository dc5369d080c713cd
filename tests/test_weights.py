"""Checkpoints and ImageNet weights: safe loading, metadata checks, head re-initialisation, offline errors."""
import logging
import urllib.error

import pytest
import torch
import torchvision

from crop_classifier.errors import CheckpointError, WeightsUnavailableError
from crop_classifier.models import (
    build_classifier,
    classifier_from_checkpoint,
    load_checkpoint,
    model_meta,
    save_checkpoint,
)


def _tiny(name="v3_79", n=3):
    torch.manual_seed(0)
    m = build_classifier(name, n, width=0.125)
    with torch.no_grad():  # non-default BN stats so a round trip that drops buffers would show
        for b in m.buffers():
            if b.dtype.is_floating_point:
                b.uniform_(0.5, 1.5)
    return m.eval()


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_checkpoint_round_trip_rebuilds_same_model(tmp_path, suffix):
    m = _tiny()
    meta = model_meta(m, "v3_79", ["a", "b", "c"], context=0.1, mode="square")
    path = save_checkpoint(tmp_path / f"ckpt{suffix}", m, meta)
    m2, meta2 = classifier_from_checkpoint(path, expected_meta={"arch": "v3_79", "input_size": 79})
    assert meta2["class_names"] == ["a", "b", "c"] and meta2["crop"] == {"context": 0.1, "mode": "square"}
    x = torch.randn(2, 3, 79, 79)
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m(x))
    assert not m2.training


def test_meta_mismatch_names_expected_and_found(tmp_path):
    m = _tiny()
    path = save_checkpoint(tmp_path / "c.pth", m, model_meta(m, "v3_79", ["a", "b", "c"]))
    with pytest.raises(CheckpointError, match=r"arch is 'v3_79' but 'v3_151' was expected"):
        load_checkpoint(path, {"arch": "v3_151"})
    with pytest.raises(CheckpointError, match=r"num_classes is 3 but 5 was expected"):
        load_checkpoint(path, {"num_classes": 5})


def test_missing_meta_and_truncated_file_are_clear(tmp_path):
    m = _tiny()
    p = tmp_path / "nometa.pth"
    torch.save({"model": m.state_dict(), "meta": {"arch": "v3_79"}}, p)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(p)
    good = save_checkpoint(tmp_path / "good.pth", m, model_meta(m, "v3_79", list("abc")))
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="cut.pth"):
        load_checkpoint(cut)


def test_build_with_own_checkpoint_checks_arch(tmp_path):
    m = _tiny("v3_79")
    path = save_checkpoint(tmp_path / "c.pth", m, model_meta(m, "v3_79", list("abc")))
    with pytest.raises(CheckpointError, match="arch"):
        build_classifier("v3_151", 3, width=0.125, weights=path)
    same = build_classifier("v3_79", 3, width=0.125, weights=path).eval()
    torch.testing.assert_close(same.fc.weight, m.fc.weight)


def test_imagenet_file_loads_into_every_variant_and_reinits_head(tmp_path, caplog):
    tv = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    path = tmp_path / "inception_v3_google.pth"
    torch.save({f"module.{k}": v for k, v in tv.state_dict().items()}, path)  # DDP-style prefix is stripped
    for name in ["v3_79", "v3_151", "v3_299"]:
        m = build_classifier(name, 1000, weights=path)
        torch.testing.assert_close(m.fc.weight, tv.fc.weight)
        assert m.transform_input
    with caplog.at_level(logging.WARNING):
        m = build_classifier("v3_79", 5, weights=path)
    assert "re-initialising" in caplog.text and m.fc.weight.shape == (5, 2048)
    torch.testing.assert_close(m.Conv2d_1a_3x3.conv.weight, tv.Conv2d_1a_3x3.conv.weight)
    with pytest.raises(CheckpointError, match="width=1.0"):
        build_classifier("v3_79", 1000, width=0.5, weights=path)


def test_offline_imagenet_download_names_the_local_file_option(monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsUnavailableError, match="MODEL.IMAGENET_WEIGHTS|--imagenet-weights"):
        build_classifier("v3_79", weights="imagenet")
