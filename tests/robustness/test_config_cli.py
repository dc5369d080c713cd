"""Configs and command lines: unknown keys, wrong types, unknown architectures give one clear error that
names the key (or flag), and the tools exit with status 2 instead of a traceback."""

import pytest

from crop_classifier.config import load_config
from tool_loader import load_tool


@pytest.mark.parametrize("opts,exc,message", [
    (["MODEL.WIDHT", "0.5"], KeyError, "MODEL.WIDHT"),
    (["SOLVER.NOPE.X", "1"], KeyError, "SOLVER.NOPE.X"),
    (["MODEL.WIDTH", "wide"], ValueError, "MODEL.WIDTH"),
    (["SOLVER.MAX_EPOCHS", "2.5"], ValueError, "SOLVER.MAX_EPOCHS"),
    (["MODEL.WIDTH", "-1"], ValueError, "MODEL.WIDTH"),
    (["MODEL.ARCH", "v3_80"], ValueError, "MODEL.ARCH"),
    (["CROP.MODE", "stretch"], ValueError, "CROP.MODE"),
    (["MODEL.WIDTH"], ValueError, "KEY VALUE pairs"),
])
def test_config_overrides(opts, exc, message):
    with pytest.raises(exc, match=message):
        load_config(None, opts)


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"MODEL.ARCH.*v3_80.*v3_79"):
        load_config(None, ["MODEL.ARCH", "v3_80"])


@pytest.mark.parametrize("yaml_text,message", [
    ("MODEL:\n  WIDHT: 0.5\n", "MODEL.WIDHT"),
    ("MODEL:\n  WIDTH: [1, 2]\n", "MODEL.WIDTH"),
    ("MODEL:\n  ARCH: resnet50\n", "MODEL.ARCH"),
    ("MODEL: [unclosed\n", "cfg.yaml"),
])
def test_config_files(tmp_path, yaml_text, message):
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml_text)
    with pytest.raises(Exception, match=message) as info:
        load_config(p)
    assert str(p) in str(info.value)


@pytest.mark.parametrize("opts,message", [
    (["MODEL.WIDHT", "0.5"], "MODEL.WIDHT"),
    (["MODEL.WIDTH", "wide"], "MODEL.WIDTH"),
    (["MODEL.ARCH", "v3_80"], "MODEL.ARCH"),
    (["SOLVER.MAX_EPOCHS"], "KEY VALUE"),
])
def test_train_cli_one_clear_line(tmp_path, capsys, opts, message):
    cfg = tmp_path / "c.yaml"
    # a dataset that does not exist: should the config error be missed, the run still stops at once
    cfg.write_text(f'DATASETS:\n  TRAIN: ["coco:{tmp_path}/none.json:{tmp_path}"]\nOUTPUT_DIR: "{tmp_path}/out"\n')
    rc = load_tool("train").main(["--config-file", str(cfg), "--no-progress"] + opts)
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_train_cli_missing_config_file(tmp_path, capsys):
    assert load_tool("train").main(["--config-file", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def test_infer_cli_unknown_architecture_and_bad_values(tmp_path, capsys):
    import torch

    from crop_classifier.models import build_classifier, save_checkpoint
    from crop_classifier.models.weights import model_meta

    torch.manual_seed(0)
    m = build_classifier("v3_79", 2, width=0.125, aux_logits=False)
    ckpt = save_checkpoint(tmp_path / "clf.pth", m, model_meta(m, "v3_79", ["a", "b"]))
    gt = tmp_path / "gt.json"
    gt.write_text('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}')
    infer = load_tool("infer")
    base = ["--input", str(tmp_path), "--output", str(tmp_path / "out"), "--classifier-weights", str(ckpt),
            "--detector", f"gt:{gt}", "--no-progress"]
    rc = infer.main(base + ["--classifier", "v3_80"])
    err = capsys.readouterr().err
    assert rc == 2 and "--classifier" in err and "v3_80" in err and "v3_79" in err, err
    for bad in (["--fusion", "merge"], ["--batch-size", "four"], ["--crop-mode", "stretch"]):
        with pytest.raises(SystemExit) as info:
            infer.main(base + bad)
        assert info.value.code == 2
        assert bad[0] in capsys.readouterr().err
    rc = infer.main(base + ["--batch-size", "0"])
    assert rc == 2 and "--batch-size" in capsys.readouterr().err


@pytest.mark.detectron2
def test_d2_config_unknown_key_and_type():
    from detectron2.config import get_cfg

    from crop_classifier.d2.config import add_crop_classifier_config

    cfg = add_crop_classifier_config(get_cfg())
    with pytest.raises((KeyError, AssertionError), match="MODEL.CROP_CLASSIFIER.FUSIONN"):  # yacs asserts
        cfg.merge_from_list(["MODEL.CROP_CLASSIFIER.FUSIONN", "replace"])
    with pytest.raises(ValueError, match="MODEL.CROP_CLASSIFIER.NMS_THRESH"):
        cfg.merge_from_list(["MODEL.CROP_CLASSIFIER.NMS_THRESH", "high"])


@pytest.mark.detectron2
@pytest.mark.parametrize("arch", ["v3_80", "resnet50"])
def test_d2_meta_arch_unknown_classifier_architecture(arch):
    """Building the second stage of the meta-architecture checks MODEL.CROP_CLASSIFIER.ARCH first."""
    from detectron2.config import get_cfg

    from crop_classifier.d2.config import add_crop_classifier_config
    from crop_classifier.d2.meta_arch import build_second_stage
    from crop_classifier.models import ARCHITECTURES

    cfg = add_crop_classifier_config(get_cfg())
    cfg.merge_from_list(["MODEL.CROP_CLASSIFIER.ARCH", arch])
    with pytest.raises(ValueError, match=r"MODEL\.CROP_CLASSIFIER\.ARCH") as info:
        build_second_stage(cfg)
    assert arch in str(info.value) and all(a in str(info.value) for a in ARCHITECTURES)
