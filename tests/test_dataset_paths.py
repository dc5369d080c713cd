"""A config's relative dataset paths, run from another folder: an error that says they are taken relative to
the working directory and from where to run, not a bare "no such file"."""
import pytest
from tool_loader import load_tool

from crop_classifier.config import REPO_ROOT
from crop_classifier.engine.data import dataset_files
from crop_classifier.errors import ConfigError
from data_paths import COCO128

ANN = COCO128 / "annotations" / "instances_train2017.json"
CONFIG = REPO_ROOT / "configs" / "cpu" / "v3_79_w025_coco128.yaml"  # paths relative to the checkout
pytestmark = pytest.mark.skipif(not ANN.is_file(), reason="coco128 (shared data) not present")


def test_relative_paths_from_another_folder_say_where_to_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = "coco:../shared/data/coco128/annotations/instances_train2017.json:../shared/data/coco128/images"
    with pytest.raises(ConfigError) as e:
        dataset_files(name)
    msg = str(e.value)
    assert "relative to the working directory" in msg and str(tmp_path) in msg
    assert f"it exists relative to {REPO_ROOT}: run from there" in msg
    monkeypatch.chdir(REPO_ROOT)  # from the checkout the same name works
    assert dataset_files(name)[0].endswith("instances_train2017.json")


def test_a_path_found_nowhere_and_a_missing_image_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="run from the folder it is relative to"):
        dataset_files("coco:nowhere/ann.json:nowhere/images")
    with pytest.raises(ConfigError, match="image folder .*missing_images: no such folder"):
        dataset_files(f"coco:{ANN}:{tmp_path / 'missing_images'}")


def test_train_from_another_folder_is_a_usage_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = load_tool("train").main(["--config-file", str(CONFIG), "--no-progress", "SOLVER.MAX_EPOCHS", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "relative to the working directory" in err and "Traceback" not in err
