"""Config: paper-recipe defaults, _BASE_ inheritance, overrides, unknown keys and bad values named."""
from pathlib import Path

import pytest

from crop_classifier.config import get_cfg, load_config, parse_dataset_name
from crop_classifier.crops import DEFAULT_CONTEXT

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CLASSIFIER_CONFIGS = sorted(p for p in CONFIGS.rglob("*.yaml") if "d2" not in p.relative_to(CONFIGS).parts)


def test_defaults_are_the_paper_recipe():
    s = get_cfg().SOLVER
    assert (s.OPTIMIZER, s.BASE_LR, s.REFERENCE_BATCH_SIZE) == ("rmsprop", 0.045, 32)
    assert (s.RMSPROP_DECAY, s.RMSPROP_EPS) == (0.9, 1.0)
    assert (s.LR_DECAY, s.LR_DECAY_EPOCHS, s.CLIP_GRAD_NORM, s.LABEL_SMOOTHING) == (0.94, 2.0, 2.0, 0.1)
    assert get_cfg().MODEL.AUX_LOSS_WEIGHT == 0.4
    # Training crops like inference does unless a config says otherwise.
    assert get_cfg().CROP.CONTEXT == DEFAULT_CONTEXT


def test_every_shipped_config_loads():
    assert len(CLASSIFIER_CONFIGS) >= 6
    for path in CLASSIFIER_CONFIGS:
        if path.name.startswith("Base-"):
            continue
        cfg = load_config(path)
        assert cfg.MODEL.ARCH in ("v3_79", "v3_151", "v3_299", "auto"), path
        assert cfg.DATASETS.TRAIN, path


@pytest.mark.parametrize("size", [79, 151, 299])
def test_variant_configs_inherit_the_base(size):
    cfg = load_config(CONFIGS / f"v3_{size}.yaml")
    assert cfg.MODEL.ARCH == f"v3_{size}" and cfg.MODEL.WIDTH == 1.0
    assert cfg.SOLVER.RMSPROP_EPS == 1.0 and cfg.SOLVER.CLIP_GRAD_NORM == 2.0  # from _BASE_
    assert cfg.DATASETS.TRAIN[0].startswith("coco:")
    assert cfg.is_frozen()


def test_overrides_apply_in_order(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text('_BASE_: "%s"\nSOLVER:\n  BASE_LR: 0.01\n' % (CONFIGS / "v3_79.yaml"))
    cfg = load_config(f, ["SOLVER.BASE_LR", "0.02", "DATASETS.TRAIN", "['synthetic:/tmp/s:4:1']"])
    assert cfg.SOLVER.BASE_LR == 0.02
    assert cfg.DATASETS.TRAIN == ("synthetic:/tmp/s:4:1",)
    assert cfg.MODEL.ARCH == "v3_79"


def test_unknown_key_in_file_is_named(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("SOLVER:\n  BASE_LRR: 0.1\n")
    with pytest.raises(KeyError, match=r"SOLVER\.BASE_LRR") as e:
        load_config(f)
    assert "bad.yaml" in str(e.value)


def test_unknown_key_on_command_line_is_named():
    with pytest.raises(KeyError, match=r"MODEL\.WIDHT"):
        load_config(None, ["MODEL.WIDHT", "0.5"])
    with pytest.raises(ValueError, match="KEY VALUE pairs"):
        load_config(None, ["MODEL.WIDTH"])


@pytest.mark.parametrize("opts, key", [
    (["MODEL.WIDTH", "0.0"], "MODEL.WIDTH"),
    (["CROP.MODE", "'stretch'"], "CROP.MODE"),
    (["SOLVER.OPTIMIZER", "'adam'"], "SOLVER.OPTIMIZER"),
    (["SOLVER.LABEL_SMOOTHING", "1.0"], "SOLVER.LABEL_SMOOTHING"),
    (["SOLVER.BASE_LR", "'fast'"], "SOLVER.BASE_LR"),  # type mismatch, caught by CfgNode
    (["DATASETS.TRAIN", "['imagenet:/data']"], "DATASETS.TRAIN"),
])
def test_bad_values_name_the_key(opts, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(None, opts)


def test_missing_config_file():
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config("nope.yaml")


def test_a_diamond_of_bases_is_not_a_cycle(tmp_path):
    """Two bases that share one base (a diamond) load; only an ancestor named again is a cycle."""
    _write(tmp_path, {"root.yaml": "SEED: 1\nSOLVER:\n  BASE_LR: 0.1\n",
                              "b.yaml": '_BASE_: "root.yaml"\nSEED: 2\n',
                              "c.yaml": '_BASE_: "root.yaml"\nSOLVER:\n  MAX_EPOCHS: 7\n',
                              "top.yaml": '_BASE_: ["b.yaml", "c.yaml"]\nMODEL:\n  WIDTH: 0.5\n'})
    cfg = load_config(tmp_path / "top.yaml")
    assert (cfg.SEED, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_EPOCHS, cfg.MODEL.WIDTH) == (1, 0.1, 7, 0.5)


def _write(tmp_path, files):
    for name, text in files.items():
        (tmp_path / name).write_text(text)


def test_base_list_and_relative_paths_follow_fvcore(tmp_path):
    """A base path is relative to the file naming it; later bases and the file's own keys win."""
    (tmp_path / "sub").mkdir()
    _write(tmp_path, {"sub/a.yaml": "SEED: 1\nSOLVER:\n  BASE_LR: 0.2\n", "sub/b.yaml": '_BASE_: "a.yaml"\nSEED: 2\n',
                      "top.yaml": '_BASE_: ["sub/b.yaml", "%s"]\nSOLVER:\n  MAX_EPOCHS: 3\n'
                                  % (CONFIGS / "v3_79.yaml")})
    cfg = load_config(tmp_path / "top.yaml")
    assert (cfg.SEED, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_EPOCHS, cfg.MODEL.ARCH) == (2, 0.045, 3, "v3_79")


def test_dataset_names():
    assert parse_dataset_name("coco:/a/b/ann.json:/a/images") == {
        "kind": "coco", "ann_file": "/a/b/ann.json", "image_dir": "/a/images"}
    # Paths with ':' in them: numeric fields split from the right.
    assert parse_dataset_name("synthetic:/tmp/x:y:100:7") == {
        "kind": "synthetic", "dir": "/tmp/x:y", "num_images": 100, "seed": 7}
    for bad in ("coco:/only/ann.json", "synthetic:/d:ten:0", "synthetic:/d:0:0", "/no/kind", "voc:/x:/y"):
        with pytest.raises(ValueError, match="dataset name|dataset kind|no kind"):
            parse_dataset_name(bad)
