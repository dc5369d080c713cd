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


# ---------------------------------------------------------------------------------------- broken config files
# Each case: (files to write, the file passed to the tool, text the one error line must hold). Before the fix a
# self- or two-file _BASE_ cycle ended in a RecursionError traceback and bad YAML in a raw parser traceback.
BROKEN_CONFIGS = {
    "self_cycle": ({"a.yaml": '_BASE_: "a.yaml"\n'}, "a.yaml", "_BASE_ cycle: a.yaml -> a.yaml"),
    "two_file_cycle": ({"a.yaml": '_BASE_: "b.yaml"\nSEED: 1\n', "b.yaml": '_BASE_: "a.yaml"\n'}, "a.yaml",
                       "_BASE_ cycle: a.yaml -> b.yaml -> a.yaml"),
    "cycle_through_a_list": ({"a.yaml": '_BASE_: ["c.yaml", "b.yaml"]\n', "b.yaml": '_BASE_: "sub/../a.yaml"\n',
                              "c.yaml": "SEED: 2\n", "sub/x.yaml": ""}, "a.yaml", "_BASE_ cycle"),
    "malformed_yaml": ({"bad.yaml": "MODEL: [unclosed\n"}, "bad.yaml", "not valid YAML at line"),
    "malformed_base": ({"top.yaml": '_BASE_: "bad.yaml"\n', "bad.yaml": "SOLVER:\n  BASE_LR: 0.1\n   x: {\n"},
                       "top.yaml", "bad.yaml: not valid YAML"),
    "missing_base": ({"top.yaml": '_BASE_: "nope.yaml"\n'}, "top.yaml", "nope.yaml"),
    "empty_file": ({"empty.yaml": ""}, "empty.yaml", "empty file"),
    "a_list_not_a_mapping": ({"list.yaml": "- 1\n- 2\n"}, "list.yaml", "YAML list"),
    "binary_file": ({"bin.yaml": "\udcff\udcfe\x00"}, "bin.yaml", "not a UTF-8 text file"),
    "group_over_value": ({"top.yaml": '_BASE_: "base.yaml"\nMODEL:\n  ARCH: v3_79\n', "base.yaml": "MODEL: 3\n"},
                         "top.yaml", "MODEL is a group"),
}


def _write_configs(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(text.encode("utf-8", "surrogateescape"))


@pytest.mark.parametrize("case", sorted(BROKEN_CONFIGS))
def test_broken_config_file_is_a_config_error(tmp_path, case):
    from crop_classifier.errors import ConfigError

    files, top, message = BROKEN_CONFIGS[case]
    _write_configs(tmp_path, files)
    with pytest.raises(ConfigError, match="yaml") as info:
        load_config(tmp_path / top)
    assert message in str(info.value) and len(str(info.value).splitlines()) == 1


@pytest.mark.parametrize("tool", ["train", "evaluate"])
@pytest.mark.parametrize("case", sorted(BROKEN_CONFIGS))
def test_broken_config_file_one_line_exit_2(tmp_path, capsys, tool, case):
    files, top, message = BROKEN_CONFIGS[case]
    _write_configs(tmp_path, files)
    args = ["--config-file", str(tmp_path / top), "--no-progress"]
    rc = load_tool(tool).main(args + (["--weights", str(tmp_path / "w.pth")] if tool == "evaluate" else []))
    err = capsys.readouterr().err.strip()
    assert rc == 2, err
    assert err.startswith("error:") and message in err and "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    named = [name for name in files if name in err]
    assert named, f"the error names none of the config files: {err}"


# ---------------------------------------------------------------------------------------- --imagenet-weights
def _capture(monkeypatch, attr, result):
    """Replaces crop_classifier.engine.<attr> (the tools import it at call time); returns the configs it got."""
    import crop_classifier.engine as engine

    seen = []

    def fake(cfg, *args, **kwargs):
        seen.append(cfg)
        return result(cfg) if callable(result) else result

    monkeypatch.setattr(engine, attr, fake)
    return seen


EVAL_RESULT = {"num_samples": 0, "top1": 0.0, "top5": 0.0, "mean_class_accuracy": 0.0, "paths": {}}


@pytest.mark.parametrize("name", ["imagenet.pth", "weights [v2] 1.0.pth", "True"])
def test_imagenet_weights_flag_reaches_the_config(tmp_path, monkeypatch, capsys, name):
    """The flag the README and the offline message name is accepted by both tools and sets
    MODEL.IMAGENET_WEIGHTS verbatim (a path that reads as a YAML literal stays a path)."""
    weights = tmp_path / name
    weights.write_bytes(b"x")
    seen = _capture(monkeypatch, "train", {})
    rc = load_tool("train").main(["--config-file", str(_config(tmp_path)), "--imagenet-weights", str(weights)])
    assert rc == 0, capsys.readouterr().err
    assert seen[0].MODEL.IMAGENET_WEIGHTS == str(weights) and seen[0].is_frozen()
    seen = _capture(monkeypatch, "evaluate_checkpoint", EVAL_RESULT)
    rc = load_tool("evaluate").main(["--config-file", str(_config(tmp_path)), "--weights", str(weights),
                                     "--imagenet-weights", str(weights)])
    assert rc == 0, capsys.readouterr().err
    assert seen[0].MODEL.IMAGENET_WEIGHTS == str(weights)


def _config(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f'DATASETS:\n  TRAIN: ["coco:{tmp_path}/none.json:{tmp_path}"]\nOUTPUT_DIR: "{tmp_path}/out"\n')
    return cfg


@pytest.mark.parametrize("source", ["flag", "config"])
def test_missing_imagenet_weights_file_fails_before_training(tmp_path, monkeypatch, capsys, source):
    seen = _capture(monkeypatch, "train", {})
    missing = str(tmp_path / "nope.pth")
    extra = ["--imagenet-weights", missing] if source == "flag" else ["MODEL.IMAGENET_WEIGHTS", missing]
    rc = load_tool("train").main(["--config-file", str(_config(tmp_path))] + extra)
    err = capsys.readouterr().err.strip()
    assert rc == 2 and not seen
    assert len(err.splitlines()) == 1 and "nope.pth" in err and "no such file" in err
    assert ("--imagenet-weights" if source == "flag" else "MODEL.IMAGENET_WEIGHTS") in err


def test_offline_imagenet_message_names_only_what_exists(tmp_path, monkeypatch, capsys):
    """Offline, --imagenet-weights imagenet fails with one line (exit 2) whose every flag the tools accept and
    whose config key exists."""
    import re
    import urllib.error

    import torch

    from crop_classifier.config import get_cfg
    from crop_classifier.models import weights as weights_mod

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    seen = _capture(monkeypatch, "train",
                    lambda cfg: weights_mod.load_imagenet_weights(None, cfg.MODEL.IMAGENET_WEIGHTS))
    rc = load_tool("train").main(["--config-file", str(_config(tmp_path)), "--imagenet-weights", "imagenet"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and seen[0].MODEL.IMAGENET_WEIGHTS == "imagenet"
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    flags = re.findall(r"(?<![\w-])--[a-z][\w-]*", err)
    assert flags, err
    for tool in ("train", "evaluate"):
        known = load_tool(tool).build_parser()._option_string_actions
        assert [f for f in flags if f not in known] == [], f"{tool} does not accept what the message names: {err}"
    for key in re.findall(r"\b[A-Z][A-Z_]+(?:\.[A-Z][A-Z_]+)+\b", err):
        node = get_cfg()
        for part in key.split("."):
            assert part in node, f"message names {key}, which is no config key"
            node = node[part]
