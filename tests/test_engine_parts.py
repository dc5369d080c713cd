"""The engine's loop on prebuilt parts (in-memory crops, as the trade-off benchmark trains) and its evaluation
through the inference form."""
import json
import copy

import pytest
import torch

from crop_classifier.config import get_cfg
from crop_classifier.data.transforms import normalize
from crop_classifier.engine import Trainer, TrainingParts
from crop_classifier.engine.data import RoutedTensorCropDataset, TensorCropDataset
from crop_classifier.engine.evaluation import inference_form, predict
from crop_classifier.models import Routes, build_classifier, create_classifier, model_meta
from numerics import assert_fp32_close


def _crops(n=12, size=35, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g), torch.arange(n) % classes


def _parts_trainer(out, seed=0, epochs=2):
    x, y = _crops()
    torch.manual_seed(0)
    model = build_classifier("v3_79", 3, width=0.125, aux_logits=False)
    meta = model_meta(model, "v3_79", ["a", "b", "c"], context=0.1, mode="square")
    meta["input_size"] = 35
    cfg = get_cfg()
    cfg.MODEL.ARCH, cfg.MODEL.WIDTH, cfg.MODEL.AUX_LOGITS = "v3_79", 0.125, False
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_EPOCHS, cfg.SOLVER.BASE_LR = 4, epochs, 0.01
    cfg.SOLVER.LR_DECAY_EPOCHS, cfg.SOLVER.LOG_PERIOD = 1.0, 1
    cfg.DATALOADER.NUM_WORKERS, cfg.SEED, cfg.OUTPUT_DIR = 0, seed, str(out)
    parts = TrainingParts(model, meta, TensorCropDataset(x, y), device=torch.device("cpu"))
    return Trainer(cfg, progress=False, parts=parts)


def test_tensor_crop_dataset_flips_and_normalises():
    x, y = _crops(n=64, size=8)
    ds = TensorCropDataset(x, y)
    torch.manual_seed(1)
    batch, labels = ds.__getitems__(range(64))
    ref = normalize(x.float() / 255)
    same = torch.isclose(batch, ref, atol=1e-5).flatten(1).all(1)
    flipped = torch.isclose(batch, ref.flip(-1), atol=1e-5).flatten(1).all(1)
    assert torch.equal(labels, y) and bool((same | flipped).all())
    assert 10 < int(flipped.sum()) < 54  # about half, not none or all
    assert torch.equal(TensorCropDataset(x, y, flip=False).__getitems__([3, 5])[0], ref[[3, 5]])
    with pytest.raises(ValueError, match="uint8"):
        TensorCropDataset(x.float(), y)
    with pytest.raises(ValueError, match="labels"):
        TensorCropDataset(x, y[:3])


def test_trainer_on_parts_runs_the_engine_loop_and_repeats(tmp_path):
    a = _parts_trainer(tmp_path / "a")
    before = {k: v.clone() for k, v in a.module.state_dict().items()}
    assert a.iters_per_epoch == 3 and a.test_loader is None  # 12 crops, batches of 4, drop_last
    res = a.train()
    assert [e["epoch"] for e in res["train"]] == [1, 2] and res["eval"] is None
    assert a.scheduler.last_epoch == 6
    # LR_DECAY_EPOCHS 1: two decays after two epochs, at the batch-scaled rate (the engine's schedule).
    assert a.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 4 / 32 * 0.94 ** 2)
    assert not torch.equal(before["Conv2d_1a_3x3.conv.weight"], a.module.state_dict()["Conv2d_1a_3x3.conv.weight"])
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["kind"] == "train" for r in records) == 6 and sum(r["kind"] == "epoch" for r in records) == 2
    assert (tmp_path / "a" / "model_final.pth").is_file()

    b = _parts_trainer(tmp_path / "b")
    for e in range(2):
        b.train_one_epoch(e)
    for k, v in a.module.state_dict().items():
        assert torch.equal(v, b.module.state_dict()[k]), k


def test_parts_smaller_than_a_batch_are_refused(tmp_path):
    x, y = _crops(n=3)
    model = build_classifier("v3_79", 3, width=0.125, aux_logits=False)
    cfg = get_cfg()
    cfg.SOLVER.IMS_PER_BATCH, cfg.OUTPUT_DIR = 4, str(tmp_path)
    parts = TrainingParts(model, model_meta(model, "v3_79", "abc"), TensorCropDataset(x, y), device="cpu")
    with pytest.raises(ValueError, match="fewer than one batch of 4"):
        Trainer(cfg, progress=False, parts=parts)


def test_predict_runs_the_inference_form_on_unnormalised_crops():
    torch.manual_seed(0)
    model = build_classifier("v3_79", 3, width=0.125, aux_logits=False).eval()
    with torch.no_grad():  # non-trivial BN statistics, so folding them is exercised
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    meta = model_meta(model, "v3_79", ["a", "b", "c"])
    x = torch.rand(6, 3, 79, 79)
    loader = [(x[:4], torch.tensor([0, 1, 2, 0])), (x[4:], torch.tensor([1, 2]))]
    classifier = inference_form(model, meta, torch.device("cpu"))
    logits, labels = predict(classifier, loader, progress=False)
    with torch.no_grad():  # float64: the reference without rounding of its own (tests/numerics.py)
        ref = copy.deepcopy(model).double()(normalize(x).double())
    assert labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert_fp32_close(logits, ref, what="predict vs the model in float64")
    # BN folded in the inference form's copy; the trained model is left as it was.
    assert isinstance(classifier.net.Conv2d_1a_3x3.bn, torch.nn.Identity)
    assert isinstance(model.Conv2d_1a_3x3.bn, torch.nn.BatchNorm2d)


def _routed_crops(n=16, sizes=(79, 151), classes=3):
    g = torch.Generator().manual_seed(0)
    crops = {s: torch.randint(0, 256, (n, 3, s, s), dtype=torch.uint8, generator=g) for s in sizes}
    sides = torch.tensor([40.0, 300.0] * (n // 2))  # half route to 79, half to 151
    return crops, torch.arange(n) % classes, sides


def test_routed_tensor_crop_dataset_returns_one_size_per_batch():
    crops, y, sides = _routed_crops()
    ds = RoutedTensorCropDataset(crops, y, sides, flip=False)
    assert ds.sizes == (79, 151) and ds.sides.tolist() == sides.tolist() and len(ds) == 16
    x, labels = ds.__getitems__([(3, 151), (5, 151)])
    assert torch.equal(x, normalize(crops[151][[3, 5]].float() / 255)) and labels.tolist() == [0, 2]
    assert ds[(2, 79)][0].shape == (3, 79, 79)
    with pytest.raises(ValueError, match="one input size"):
        ds.__getitems__([(0, 79), (1, 151)])
    with pytest.raises(ValueError, match="no crops at 299"):
        ds.__getitems__([(0, 299)])
    with pytest.raises(ValueError, match=r"crops\[79\]"):
        RoutedTensorCropDataset({79: crops[151]}, y, sides)
    with pytest.raises(ValueError, match="sides"):
        RoutedTensorCropDataset(crops, y, sides[:3])


def test_trainer_on_routed_parts_trains_one_size_per_step(tmp_path):
    crops, y, sides = _routed_crops()
    torch.manual_seed(0)
    routes = Routes(("v3_79", "v3_151"))
    model = create_classifier("auto", 3, width=0.125, aux_logits=False, routes=routes.archs)
    meta = model_meta(model, "auto", ["a", "b", "c"], routes=routes, context=0.1, mode="square")
    cfg = get_cfg()
    cfg.MODEL.ARCH, cfg.MODEL.WIDTH, cfg.MODEL.AUX_LOGITS = "auto", 0.125, False
    cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.MAX_EPOCHS, cfg.SOLVER.BASE_LR = 4, 1, 0.01
    cfg.DATALOADER.NUM_WORKERS, cfg.OUTPUT_DIR, cfg.INPUT.ROUTE_JITTER = 0, str(tmp_path), 0.5
    trainer = Trainer(cfg, progress=False, parts=TrainingParts(model, meta, RoutedTensorCropDataset(crops, y, sides),
                                                               device="cpu"))
    assert trainer.routes.jitter == 0.5 and trainer.routes.thresholds == routes.thresholds
    assert trainer.iters_per_epoch == 16 // 4 - 1  # RoutedBatchSampler: a length every draw reaches
    batch_sizes = [x.shape[-1] for x, _ in trainer.train_loader]
    assert len(batch_sizes) == 3 and set(batch_sizes) <= {79, 151}
    before = model.Conv2d_1a_3x3.conv.weight.clone()
    trainer.train_one_epoch(0)
    trainer.metrics.close()
    assert not torch.equal(before, model.Conv2d_1a_3x3.conv.weight)
    # A dataset without some route's crops is refused, naming the sizes.
    with pytest.raises(ValueError, match=r"lacks \[151\]"):
        Trainer(cfg, progress=False, parts=TrainingParts(model, meta, RoutedTensorCropDataset(
            {79: crops[79]}, y, sides), device="cpu"))
