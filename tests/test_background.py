"""The optional background class: negative training boxes, the config key, the checkpoint meta."""
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from crop_classifier.config import load_config
from crop_classifier.data import (NEGATIVE_ANN_ID, CropDataset, add_negative_samples, generate_scenes,
                                  load_coco_samples, random_negative_boxes)
from crop_classifier.structures import BACKGROUND_CLASS, ClassifierMeta


def test_negative_boxes_overlap_no_object_and_stay_inside():
    rng = np.random.default_rng(0)
    objects = np.array([[10, 10, 60, 60], [100, 40, 180, 120], [30, 150, 90, 190]], np.float32)
    neg = random_negative_boxes((200, 240), objects, 50, 0.3, rng)
    assert neg.shape == (50, 4)
    assert (neg[:, 0] >= 0).all() and (neg[:, 1] >= 0).all() and (neg[:, 2] <= 240).all() and (neg[:, 3] <= 200).all()
    assert (neg[:, 2] > neg[:, 0]).all() and (neg[:, 3] > neg[:, 1]).all()
    assert box_iou(torch.from_numpy(neg), torch.from_numpy(objects)).max() < 0.3
    # Deterministic in the generator; other draws differ.
    again = random_negative_boxes((200, 240), objects, 50, 0.3, np.random.default_rng(0))
    assert np.array_equal(neg, again)
    assert not np.array_equal(neg, random_negative_boxes((200, 240), objects, 50, 0.3, np.random.default_rng(1)))


def test_negative_boxes_when_objects_cover_the_image_take_the_least_overlap():
    objects = np.array([[0, 0, 100, 100]], np.float32)
    neg = random_negative_boxes((100, 100), objects, 4, 0.3, np.random.default_rng(0))
    assert neg.shape == (4, 4) and np.isfinite(neg).all()


def test_negative_placeholders_follow_the_ratio_per_image():
    box = np.zeros(4, np.float32)
    samples = [("a.jpg", box, 0, 1), ("b.jpg", box, 1, 2), ("b.jpg", box, 1, 3), ("c.jpg", box, 0, 4)]
    out = add_negative_samples(samples, 0.5, 2)
    neg = out[len(samples):]
    assert out[:len(samples)] == samples and len(neg) == 2
    assert all(s[2] == 2 and s[3] == NEGATIVE_ANN_ID and np.isnan(s[1]).all() for s in neg)
    assert add_negative_samples(samples, 0.0, 2) == samples
    with pytest.raises(ValueError, match="ratio"):
        add_negative_samples(samples, -1, 2)


def test_dataset_crops_negatives_anew_each_epoch(tmp_path):
    ann = generate_scenes(tmp_path, 2, seed=0, image_size=256)
    s = load_coco_samples(ann, ann.parent)
    K = len(s.class_names)
    samples = add_negative_samples(s.samples, 1.0, K)
    ds = CropDataset(samples, 32, train=True, jitter_iou=0.7)
    neg_idx = [i for i, x in enumerate(samples) if x[3] == NEGATIVE_ANN_ID]
    idx = list(range(len(s))) + neg_idx
    torch.manual_seed(0)
    x1, y1 = ds.__getitems__(idx)
    assert torch.isfinite(x1).all() and y1.tolist() == s.labels.tolist() + [K] * len(neg_idx)
    torch.manual_seed(1)
    x2, _ = CropDataset(samples, 32, train=True, jitter_iou=0.7).__getitems__(idx)
    assert not torch.equal(x1[len(s):], x2[len(s):])  # other negatives in another epoch
    torch.manual_seed(0)
    x3, _ = CropDataset(samples, 32, train=True, jitter_iou=0.7).__getitems__(idx)
    assert torch.equal(x1, x3)  # the same seed repeats
    # The first image's object crops are those of a dataset without negatives (its jitter draws come first).
    torch.manual_seed(0)
    x0, _ = CropDataset(s, 32, train=True, jitter_iou=0.7).__getitems__(list(range(len(s))))
    first = int((s.image_index == 0).sum())
    assert torch.equal(x0[:first], x1[:first])


def test_config_keys_are_checked():
    base = ["DATASETS.TRAIN", "['synthetic:/unused:1:0']"]
    cfg = load_config(None, base + ["MODEL.BACKGROUND_CLASS", "True"])
    assert cfg.MODEL.BACKGROUND_CLASS and cfg.INPUT.BACKGROUND_RATIO == 0.25 and cfg.INPUT.BACKGROUND_MAX_IOU == 0.3
    assert not load_config(None, base).MODEL.BACKGROUND_CLASS  # off by default
    with pytest.raises(ValueError, match="INPUT.BACKGROUND_MAX_IOU"):
        load_config(None, base + ["INPUT.BACKGROUND_MAX_IOU", "1.5"])
    with pytest.raises(ValueError, match="INPUT.BACKGROUND_RATIO"):
        load_config(None, base + ["INPUT.BACKGROUND_RATIO", "-0.5"])


def test_training_with_background_records_it_in_the_meta(tmp_path):
    from crop_classifier.engine import Trainer
    from crop_classifier.models import load_checkpoint

    cfg = load_config(None, [
        "MODEL.ARCH", "'v3_79'", "MODEL.WIDTH", "0.125", "MODEL.BACKGROUND_CLASS", "True",
        "INPUT.BACKGROUND_RATIO", "0.5",
        "DATASETS.TRAIN", f"['synthetic:{tmp_path}/scenes/train:1:1']", "DATASETS.TEST", "[]",
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_EPOCHS", "1", "DATALOADER.NUM_WORKERS", "0",
        "OUTPUT_DIR", str(tmp_path / "out")])
    trainer = Trainer(cfg, progress=False)
    labels = [s[2] for s in trainer.train_loader.dataset.samples]
    n_obj = sum(lab < 12 for lab in labels)
    assert labels.count(12) == round(0.5 * n_obj) > 0
    out = trainer.train()
    meta = load_checkpoint(out["model_final"])["meta"]
    assert meta["class_names"][-1] == BACKGROUND_CLASS and meta["num_classes"] == 13
    assert meta["background_class"] == BACKGROUND_CLASS
    assert ClassifierMeta.from_dict(meta).background_class == BACKGROUND_CLASS
