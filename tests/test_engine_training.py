"""Training loop on a tiny synthetic set: exact resume, NaN stop, checkpoint contents, ImageNet init."""
import json

import pytest
import torch

from crop_classifier.config import load_config
from crop_classifier.engine import Trainer
from crop_classifier.errors import NonFiniteLossError
from crop_classifier.engine.checkpoint import LAST_CHECKPOINT
from crop_classifier.engine.metrics import read_metrics
from crop_classifier.models import build_classifier, load_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    # Names, not folders: the trainer generates them on first use. One scene each: 11 training crops
    # (two batches of 4 per epoch, the rest dropped), a handful of test crops.
    return {"train": f"synthetic:{root}/train:1:1", "test": f"synthetic:{root}/val:1:5"}


def tiny_cfg(scenes, out, *opts):
    return load_config(None, [
        "MODEL.ARCH", "'v3_79'", "MODEL.WIDTH", "0.125",
        "DATASETS.TRAIN", f"['{scenes['train']}']", "DATASETS.TEST", f"['{scenes['test']}']",
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.BASE_LR", "0.01", "SOLVER.LR_DECAY_EPOCHS", "1.0",
        "SOLVER.LOG_PERIOD", "1", "SOLVER.CHECKPOINTS_TO_KEEP", "0", "DATALOADER.NUM_WORKERS", "0",
        "TEST.IMS_PER_BATCH", "16", "OUTPUT_DIR", str(out), *opts])


def test_resume_equals_straight_training(scenes, tmp_path):
    straight = Trainer(tiny_cfg(scenes, tmp_path / "a", "SOLVER.MAX_EPOCHS", "2"), progress=False)
    ipe = straight.iters_per_epoch
    assert ipe == 2
    straight.train()

    first = Trainer(tiny_cfg(scenes, tmp_path / "b", "SOLVER.MAX_EPOCHS", "1"), progress=False)
    first.train()
    resumed = Trainer(tiny_cfg(scenes, tmp_path / "b", "SOLVER.MAX_EPOCHS", "2"), resume=True, progress=False)
    assert resumed.start_epoch == 1
    assert resumed.scheduler.last_epoch == ipe
    assert resumed.optimizer.state_dict()["state"], "optimizer state was not restored"
    resumed.train()

    a, b = straight.module.state_dict(), resumed.module.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs between straight and resumed training"
    # LR_DECAY_EPOCHS 1: two decays after two epochs, at the batch-scaled rate
    assert straight.optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 4 / 32 * 0.94 ** 2)
    assert resumed.optimizer.param_groups[0]["lr"] == straight.optimizer.param_groups[0]["lr"]
    # The resumed run appended epoch 3 to the same metrics file; the weights moved during training.
    assert [r["epoch"] for r in read_metrics(tmp_path / "b" / "metrics.jsonl", "epoch")] == [1, 2]
    fresh = build_classifier("v3_79", len(straight.class_names), width=0.125)
    assert not torch.equal(fresh.state_dict()["Conv2d_1a_3x3.conv.weight"], a["Conv2d_1a_3x3.conv.weight"])


def test_checkpoint_contents_and_final_model(scenes, tmp_path):
    cfg = tiny_cfg(scenes, tmp_path, "SOLVER.MAX_EPOCHS", "2", "SOLVER.CHECKPOINTS_TO_KEEP", "1",
                   "CROP.CONTEXT", "0.2", "CROP.MODE", "'letterbox'", "TEST.EVAL_PERIOD", "0")
    out = Trainer(cfg, progress=False).train()
    assert (tmp_path / LAST_CHECKPOINT).read_text().strip() == "model_epoch_0002.pth"
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_epoch_0002.pth", "model_final.pth"]
    ckpt = load_checkpoint(tmp_path / "model_epoch_0002.pth")
    meta = ckpt["meta"]
    assert meta["arch"] == "v3_79" and meta["width"] == 0.125 and meta["input_size"] == 79
    assert meta["num_classes"] == len(meta["class_names"]) == 12
    assert meta["crop"] == {"context": 0.2, "mode": "letterbox"}
    assert ckpt["epoch"] == 2 and ckpt["scheduler"]["last_epoch"] == 2 * ckpt["iters_per_epoch"] == 4
    assert {"optimizer", "scaler", "rng", "config", "iters_per_epoch"} <= set(ckpt)
    final = load_checkpoint(out["model_final"])
    assert set(final) == {"model", "meta"}  # weights + meta only: what the second stage loads
    # Evaluated only after the last epoch (EVAL_PERIOD 0); results written atomically next to the PNG.
    results = json.loads((tmp_path / "inference" / "results.json").read_text())
    assert results["epoch"] == 2 and 0.0 <= results["top1"] <= 1.0 and len(results["confusion_matrix"]) == 12
    assert out["eval"]["top1"] == results["top1"]
    assert sum(b["num_samples"] for b in results["accuracy_by_box_size"]) == results["num_samples"] == 4
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    kinds = {r["kind"] for r in read_metrics(tmp_path / "metrics.jsonl")}
    assert kinds == {"train", "epoch", "eval"}


def test_nan_loss_stops_and_keeps_last_good_checkpoint(scenes, tmp_path):
    trainer = Trainer(tiny_cfg(scenes, tmp_path, "SOLVER.MAX_EPOCHS", "3", "DATASETS.TEST", "[]"), progress=False)
    calls = {"n": 0}

    def poison(module, inputs, output):  # the second epoch's first forward pass produces NaN logits
        if module.training:
            calls["n"] += 1
            if calls["n"] > trainer.iters_per_epoch:
                return tuple(o * float("nan") for o in output)
        return None

    trainer.module.register_forward_hook(poison)
    with pytest.raises(NonFiniteLossError, match=r"not finite \(nan\) at epoch 2, iteration 1") as e:
        trainer.train()
    assert "model_epoch_0001.pth" in str(e.value)
    assert (tmp_path / LAST_CHECKPOINT).read_text().strip() == "model_epoch_0001.pth"
    assert not (tmp_path / "model_epoch_0002.pth").exists() and not (tmp_path / "model_final.pth").exists()
    good = load_checkpoint(tmp_path / "model_epoch_0001.pth")
    assert all(torch.isfinite(v).all() for v in good["model"].values() if v.is_floating_point())
    # The kept checkpoint resumes.
    resumed = Trainer(tiny_cfg(scenes, tmp_path, "SOLVER.MAX_EPOCHS", "3", "DATASETS.TEST", "[]"), resume=True,
                      progress=False)
    assert resumed.start_epoch == 1


def test_resume_refuses_a_checkpoint_of_another_model(scenes, tmp_path):
    Trainer(tiny_cfg(scenes, tmp_path, "SOLVER.MAX_EPOCHS", "1", "DATASETS.TEST", "[]"), progress=False)
    model = build_classifier("v3_79", 12, width=0.25)
    meta = {"arch": "v3_79", "num_classes": 12, "class_names": [str(i) for i in range(12)], "input_size": 79,
            "width": 0.25}
    save_checkpoint(tmp_path / "model_epoch_0001.pth", model, meta, extra={"epoch": 1})
    (tmp_path / LAST_CHECKPOINT).write_text("model_epoch_0001.pth")
    with pytest.raises(ValueError, match="class_names|width"):
        Trainer(tiny_cfg(scenes, tmp_path, "SOLVER.MAX_EPOCHS", "2", "DATASETS.TEST", "[]"), resume=True,
                progress=False)


def test_imagenet_weights_initialise_the_body(scenes, tmp_path):
    # A stand-in ImageNet file (1000 classes, torchvision key names) for a width-0.125 model.
    torch.manual_seed(5)
    src = build_classifier("v3_79", 1000, width=0.125)
    torch.save(src.state_dict(), tmp_path / "imagenet.pth")
    trainer = Trainer(tiny_cfg(scenes, tmp_path / "out", "MODEL.IMAGENET_WEIGHTS", f"'{tmp_path / 'imagenet.pth'}'"),
                      progress=False)
    got = trainer.module.state_dict()
    assert torch.equal(got["Mixed_7c.branch_pool.conv.weight"], src.state_dict()["Mixed_7c.branch_pool.conv.weight"])
    assert got["fc.weight"].shape[0] == 12  # new head for the 12 classes
    assert trainer.meta["transform_input"] is True
