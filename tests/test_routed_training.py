"""Multi-resolution training of the routed, shared-weight classifier (MODEL.ARCH auto) through the engine:
one input size per batch, routes in the checkpoint meta, the routed inference form, resume checks, evaluation
per route and top-1 per native size bucket (any classifier)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from tool_loader import load_tool
from numerics import assert_fp32_close

from crop_classifier.config import load_config
from crop_classifier.data import CropDataset, build_train_transform, normalize
from crop_classifier.data.negatives import NEGATIVE_ANN_ID
from crop_classifier.engine import Trainer
from crop_classifier.engine.data import load_dataset, sample_native_sides
from crop_classifier.engine.trainer import seed_everything
from crop_classifier.engine.evaluation import compute_metrics, format_size_buckets, predict_samples
from crop_classifier.errors import CheckpointError
from crop_classifier.models import RoutedInceptionV3, load_checkpoint
from crop_classifier.models.inference import RoutedClassifier, load_inference_classifier
from crop_classifier.engine.trainer import _evaluation_routes
from crop_classifier.errors import UsageError
from crop_classifier.models.routing import native_sides

AUTO_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "cpu" / "auto_w025_synthetic.yaml"


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("routed_scenes")
    names = {"train": f"synthetic:{root}/train:1:1", "test": f"synthetic:{root}/val:1:5"}
    # A threshold between the routes at the training crops' median native side: both routes get crops,
    # whatever the generator draws.
    sides = sample_native_sides(load_dataset(names["train"]).samples, 0.1)
    names["threshold"] = float(np.median(sides))
    return names


def routed_cfg(scenes, out, *opts, threshold=None):
    return load_config(None, [
        "MODEL.ARCH", "'auto'", "MODEL.WIDTH", "0.125", "MODEL.AUX_LOGITS", "False",
        "MODEL.ROUTES.ARCHS", "['v3_79', 'v3_151']", "MODEL.ROUTES.THRESHOLDS", f"[{threshold or scenes['threshold']}]",
        "DATASETS.TRAIN", f"['{scenes['train']}']", "DATASETS.TEST", f"['{scenes['test']}']",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "0.01", "SOLVER.LOG_PERIOD", "1", "SOLVER.MAX_EPOCHS", "1",
        "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "16", "OUTPUT_DIR", str(out), *opts])


@pytest.fixture(scope="module")
def trained(scenes, tmp_path_factory):
    out = tmp_path_factory.mktemp("routed_run")
    trainer = Trainer(routed_cfg(scenes, out, "INPUT.ROUTE_JITTER", "0.0"), progress=False)
    summary = trainer.train()
    return trainer, summary, out


def test_routed_training_feeds_each_batch_at_one_route(scenes, trained):
    trainer, summary, out = trained
    assert isinstance(trainer.module, RoutedInceptionV3)
    n = len(trainer.train_loader.dataset)
    assert trainer.iters_per_epoch == n // 2 - 1  # RoutedBatchSampler: a length every draw of routes reaches
    sides = sample_native_sides(trainer.train_loader.dataset.samples, 0.1)
    batches = list(trainer.train_loader.batch_sampler)
    for batch in batches:
        assert len({size for _, size in batch}) == 1
        for i, size in batch:  # no jitter here: each crop at its own route
            assert size == (79 if sides[i] <= scenes["threshold"] else 151)
    trainer.train_loader.batch_sampler.set_epoch(0)
    images = [x.shape[-1] for x, _ in trainer.train_loader]
    assert images == [b[0][1] for b in batches] and len(images) == trainer.iters_per_epoch

    meta = load_checkpoint(summary["model_final"])["meta"]
    assert meta["arch"] == "auto" and meta["input_size"] == 79 and meta["crop"]["context"] == 0.1
    assert meta["routes"] == {"archs": ["v3_79", "v3_151"], "input_sizes": [79, 151],
                              "thresholds": [scenes["threshold"]]}
    results = json.loads((out / "inference" / "results.json").read_text())
    assert sum(b["num_samples"] for b in results["size_buckets"]) == results["num_samples"] > 0
    assert [r["kind"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())].count("eval") == 1


def test_routed_checkpoint_loads_as_a_routed_classifier_matching_the_trained_views(trained):
    trainer, summary, _ = trained
    clf = load_inference_classifier(summary["model_final"])
    assert isinstance(clf, RoutedClassifier) and clf.routes.input_sizes == (79, 151)
    net = trainer.module.eval()
    torch.manual_seed(0)
    for size in (79, 151):
        x = torch.rand(3, 3, size, size)
        with torch.no_grad():
            ref = net.route(size)(normalize(x))
        assert_fp32_close(clf.route(size).logits(x), ref, what=f"route {size}")
        assert_fp32_close(clf.logits(x), ref, what="dispatched by the crops' side")


def test_resume_refuses_other_routes_and_accepts_the_same(scenes, trained):
    _, _, out = trained
    with pytest.raises(CheckpointError, match="trained with routes .*MODEL.ROUTES"):
        Trainer(routed_cfg(scenes, out, threshold=scenes["threshold"] + 7.5), resume=True, progress=False)
    with pytest.raises(CheckpointError, match="routes"):  # a single-stem config on a routed run
        Trainer(routed_cfg(scenes, out, "MODEL.ARCH", "'v3_79'"), resume=True, progress=False)
    resumed = Trainer(routed_cfg(scenes, out, "SOLVER.MAX_EPOCHS", "1"), resume=True, progress=False)
    assert resumed.start_epoch == 1


def test_routed_evaluation_is_reordered_to_sample_order():
    class Loader:  # what a routed test loader yields: route by route
        batch_sampler = [[(2, 79), (0, 79)], [(1, 151)]]

        def __iter__(self):
            yield torch.zeros(2, 3, 79, 79), torch.tensor([2, 0])
            yield torch.zeros(1, 3, 151, 151), torch.tensor([1])

    class Classifier:
        def logits(self, x):
            return torch.full((len(x), 1), float(x.shape[-1]))

    scores, labels = predict_samples(Classifier(), Loader(), progress=False)
    assert labels.tolist() == [0, 1, 2] and scores[:, 0].tolist() == [79, 151, 79]


def test_size_buckets_count_and_score_each_bucket():
    sides = torch.tensor([10.0, 31.9, 32.0, 95.0, 96.0, 199.0, 200.0, 500.0, math.nan])
    labels = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 0])
    right, wrong = [5.0, 0.0], [0.0, 5.0]
    scores = torch.tensor([right, wrong, right, right, wrong, wrong, right, right, right])
    m = compute_metrics(scores, labels, ["a", "b"], box_long_sides=sides)
    got = [(b["bucket"], b["num_samples"], b["top1"]) for b in m["size_buckets"]]
    assert got == [("<32", 2, 0.5), ("32-96", 2, 1.0), ("96-200", 2, 0.0), (">200", 2, 1.0)]
    empty = compute_metrics(scores[:2], labels[:2], ["a", "b"], box_long_sides=sides[:2])["size_buckets"]
    assert [b["num_samples"] for b in empty] == [2, 0, 0, 0] and empty[3]["top1"] is None
    table = format_size_buckets(empty)
    assert "<32" in table and "50.00%" in table and table.splitlines()[-1].strip().endswith("-")
    with pytest.raises(ValueError, match="box_long_sides"):
        compute_metrics(scores, labels, ["a", "b"], box_long_sides=sides[:3])


def test_crop_dataset_crops_each_pair_at_its_size_with_a_transform_per_size(scenes):
    samples = load_dataset(scenes["train"]).samples[:4]
    ds = CropDataset(samples, 79, train=True, transform=build_train_transform(79),
                     transform_for_size=build_train_transform)
    seed_everything(3)  # what the trainer does per epoch (albumentations < 2 draws from Python's and NumPy's)
    x, y = ds.__getitems__([(0, 151), (1, 151)])
    assert x.shape == (2, 3, 151, 151) and y.tolist() == [samples[0][2], samples[1][2]]
    assert ds.__getitems__([2, 3])[0].shape == (2, 3, 79, 79) and ds[(3, 151)][0].shape == (3, 151, 151)
    assert set(ds._transforms) == {151}  # built once, for the size the transform was not given for
    seed_everything(3)
    again = CropDataset(samples, 79, train=True, transform=build_train_transform(79),
                        transform_for_size=build_train_transform)
    assert torch.equal(again.__getitems__([(0, 151), (1, 151)])[0], x)  # seeded: runs repeat
    with pytest.raises(ValueError, match="one crop size"):
        ds.__getitems__([(0, 151), 1])
    plain = CropDataset(samples, 79, train=True, transform=build_train_transform(79))
    with pytest.raises(ValueError, match="transform_for_size"):
        plain.__getitems__([(0, 151)])
    test = CropDataset(samples, 79)  # evaluation: plain crops at any size
    assert test.__getitems__([(0, 151)])[0].shape == (1, 3, 151, 151)


def test_background_placeholders_route_by_their_image_objects():
    box = np.array([0, 0, 40, 20], np.float32)
    nan = np.full(4, np.nan, np.float32)
    samples = [("a", box, 0, 1), ("a", box * 2, 0, 2), ("a", nan, 9, NEGATIVE_ANN_ID), ("b", nan, 9, NEGATIVE_ANN_ID)]
    sides = sample_native_sides(samples, 0.1)
    assert sides[:2].tolist() == pytest.approx(native_sides(np.stack([box, box * 2]), 0.1).tolist())
    assert sides[2] == pytest.approx(np.median(sides[:2])) and sides[3] == pytest.approx(np.median(sides[:2]))


def test_evaluate_tool_on_a_routed_checkpoint(scenes, trained, tmp_path, capsys):
    _, summary, _ = trained
    evaluate = load_tool("evaluate").main
    base = ["--config-file", str(AUTO_CONFIG), "--weights", str(summary["model_final"]),
            "--no-progress"]
    opts = ["MODEL.WIDTH", "0.125", "DATASETS.TEST", f"['{scenes['test']}']", "DATASETS.MIN_BOX_SIZE_TEST", "0.0"]
    assert evaluate([*base, "--output-dir", str(tmp_path), "--route-thresholds", "500", *opts]) == 0
    out = capsys.readouterr()
    printed = json.loads(out.out)
    assert printed["routes"]["thresholds"] == [500.0] and "96-200" in out.err
    assert sum(b["num_samples"] for b in printed["size_buckets"]) == printed["num_samples"]
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["routes"]["thresholds"] == [500.0] and results["size_buckets"] == printed["size_buckets"]
    for bad, why in (("abc", "--route-thresholds 'abc'"), ("100,200", "must be 1 increasing")):
        assert evaluate([*base, "--route-thresholds", bad, *opts]) == 2
        err = capsys.readouterr().err.strip()
        assert why in err and len(err.splitlines()) == 1 and err.startswith("error:")
    with pytest.raises(UsageError, match="single-stem v3_79"):
        _evaluation_routes({"arch": "v3_79"}, (100.0,))


def test_routed_training_crops_background_boxes_at_their_route(scenes, tmp_path):
    t = Trainer(routed_cfg(scenes, tmp_path, "MODEL.BACKGROUND_CLASS", "True", "INPUT.BACKGROUND_RATIO", "0.5"),
                progress=False)
    ds, background = t.train_loader.dataset, len(t.class_names) - 1
    neg = [i for i, s in enumerate(ds.samples) if s[3] == NEGATIVE_ANN_ID]
    assert neg and np.isfinite(t.train_loader.batch_sampler.sides).all()
    x, y = ds.__getitems__([(neg[0], 151), (0, 151)])
    assert x.shape == (2, 3, 151, 151) and y[0] == background and torch.isfinite(x).all()
    t.train_loader.batch_sampler.set_epoch(0)
    for (images, labels), batch in zip(t.train_loader, t.train_loader.batch_sampler):
        assert images.shape[-1] == batch[0][1] and len(labels) == 2
    t.metrics.close()
