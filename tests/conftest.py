import importlib.util
import os

import pytest
from data_paths import COCO128, REPO  # noqa: F401  (one definition of the shared data path)

# albumentations checks PyPI for updates on import; tests (and CI) stay offline and quiet.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

HAVE_D2 = importlib.util.find_spec("detectron2") is not None


def pytest_configure(config):
    # CUDA-only tests (tools/gpu_check.sh runs `pytest -m cuda`); they skip where CUDA is unavailable.
    config.addinivalue_line("markers", "cuda: needs a CUDA device")
    # In the project's own venv and in CI, Detectron2 is part of the stack: a missing one is a failure, not a skip.
    if os.environ.get("CROP_CLASSIFIER_REQUIRE_D2") == "1" and not HAVE_D2:
        raise pytest.UsageError(
            "CROP_CLASSIFIER_REQUIRE_D2=1 but detectron2 is not importable: run `make setup` "
            "(the lock installs sal-detectron2); unset the variable for a core-only install."
        )


def pytest_collection_modifyitems(config, items):
    if HAVE_D2:
        return
    skip = pytest.mark.skip(reason="Detectron2 not installed (core-only install)")
    for item in items:
        if "detectron2" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def coco128():
    if not (COCO128 / "annotations" / "instances_train2017.json").is_file():
        pytest.skip(f"coco128 not found at {COCO128}")
    return COCO128


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """The export cache and the bf16 verdicts (deploy.loader.cache_root) in a folder of this session, never
    the user's ~/.cache."""
    before = os.environ.get("CROP_CLASSIFIER_CACHE")
    os.environ["CROP_CLASSIFIER_CACHE"] = str(tmp_path_factory.mktemp("crop_classifier_cache"))
    yield
    if before is None:
        os.environ.pop("CROP_CLASSIFIER_CACHE", None)
    else:
        os.environ["CROP_CLASSIFIER_CACHE"] = before
