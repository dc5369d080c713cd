"""Engine pieces on hand-made tensors: loss, schedule, clipping, metrics, confusion-matrix PNG, RNG states."""
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from crop_classifier.config import load_config
from crop_classifier.engine import (
    InceptionLoss, build_lr_scheduler, build_optimizer, clip_gradients, compute_metrics, label_smoothing_cross_entropy,
    lr_factor, plot_confusion_matrix, scaled_lr,
)
from crop_classifier.engine.checkpoint import capture_rng_state, restore_rng_state


def test_label_smoothing_matches_the_formula():
    torch.manual_seed(0)
    logits, targets, eps, k = torch.randn(6, 5), torch.tensor([0, 4, 2, 2, 1, 3]), 0.1, 5
    q = (1 - eps) * F.one_hot(targets, k).float() + eps / k  # q' = (1-e) onehot + e/K
    expected = -(q * torch.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(label_smoothing_cross_entropy(logits, targets, eps), expected)
    # epsilon 0 is plain cross-entropy; smoothing raises the loss of a confident correct guess
    confident = torch.tensor([[10.0, 0, 0, 0, 0]])
    assert label_smoothing_cross_entropy(confident, torch.tensor([0]), 0.1) > \
        label_smoothing_cross_entropy(confident, torch.tensor([0]), 0.0)


def test_inception_loss_weights_the_aux_head():
    torch.manual_seed(1)
    main, aux, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    loss = InceptionLoss(label_smoothing=0.1, aux_weight=0.4)
    ce = lambda x: label_smoothing_cross_entropy(x, y, 0.1)  # noqa: E731
    torch.testing.assert_close(loss((main, aux), y), ce(main) + 0.4 * ce(aux))
    torch.testing.assert_close(loss(main, y), ce(main))  # eval-mode output: no aux


def _cfg(*opts):
    return load_config(None, ["DATASETS.TRAIN", "['synthetic:/unused:1:0']", *opts])


def test_lr_is_scaled_by_global_batch():
    assert scaled_lr(_cfg()) == pytest.approx(0.045)
    assert scaled_lr(_cfg("SOLVER.IMS_PER_BATCH", "256")) == pytest.approx(0.045 * 8)
    assert scaled_lr(_cfg("SOLVER.IMS_PER_BATCH", "8", "SOLVER.BASE_LR", "0.01")) == pytest.approx(0.0025)


def test_schedule_decays_094_every_two_epochs():
    cfg = _cfg()
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(cfg, model)
    ipe = 5
    sched = build_lr_scheduler(cfg, opt, ipe)
    lrs = []
    for _ in range(7 * ipe):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    per_epoch = [lrs[e * ipe: (e + 1) * ipe] for e in range(7)]
    for e, values in enumerate(per_epoch):
        assert values == pytest.approx([0.045 * 0.94 ** (e // 2)] * ipe), e
    # both parameter groups (decayed weights, undecayed bias) follow it
    assert opt.param_groups[1]["lr"] == pytest.approx(0.045 * 0.94 ** 3)


def test_warmup_is_linear_then_staircase():
    assert lr_factor(0, 10, decay=0.94, decay_epochs=2, warmup_epochs=1) == pytest.approx(0.1)
    assert lr_factor(4, 10, decay=0.94, decay_epochs=2, warmup_epochs=1) == pytest.approx(0.5)
    assert lr_factor(10, 10, decay=0.94, decay_epochs=2, warmup_epochs=1) == pytest.approx(1.0)
    assert lr_factor(19, 10, decay=0.94, decay_epochs=2, warmup_epochs=1) == pytest.approx(1.0)
    assert lr_factor(20, 10, decay=0.94, decay_epochs=2, warmup_epochs=1) == pytest.approx(0.94)
    assert lr_factor(7, 3, decay=0.5, decay_epochs=0.5) == pytest.approx(0.5 ** 4)  # 7 / 1.5 -> step 4


def test_optimizer_is_rmsprop_with_paper_settings_and_no_decay_on_bn():
    cfg = _cfg()
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.RMSprop)
    g = opt.param_groups[0]
    assert (g["alpha"], g["eps"], g["momentum"], g["weight_decay"]) == (0.9, 1.0, 0.9, 4e-5)
    assert [p.ndim for p in g["params"]] == [4]  # conv weight only
    assert opt.param_groups[1]["weight_decay"] == 0.0 and len(opt.param_groups[1]["params"]) == 3
    assert isinstance(build_optimizer(_cfg("SOLVER.OPTIMIZER", "'sgd'"), model), torch.optim.SGD)


def _global_norm(params):
    return math.sqrt(sum(float(p.grad.pow(2).sum()) for p in params))


def test_clipping_bounds_the_global_norm():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(10, 10)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn_like(p) * 5
    before = _global_norm(params)
    originals = [p.grad.clone() for p in params]
    assert before > 2.0
    returned = clip_gradients(params, 2.0)
    assert float(returned) == pytest.approx(before, rel=1e-5)
    assert _global_norm(params) <= 2.0 + 1e-5
    assert _global_norm(params) == pytest.approx(2.0, rel=1e-4)
    for p, g in zip(params, originals):  # one common scale: the direction is kept
        torch.testing.assert_close(p.grad, g * (2.0 / before), rtol=1e-4, atol=1e-6)
    # below the bound nothing changes; 0 disables clipping but still reports the norm
    small = [torch.nn.Parameter(torch.zeros(3))]
    small[0].grad = torch.tensor([0.3, 0.4, 0.0])
    clip_gradients(small, 2.0)
    torch.testing.assert_close(small[0].grad, torch.tensor([0.3, 0.4, 0.0]))
    big = [torch.nn.Parameter(torch.zeros(2))]
    big[0].grad = torch.tensor([30.0, 40.0])
    assert float(clip_gradients(big, 0.0)) == pytest.approx(50.0)
    torch.testing.assert_close(big[0].grad, torch.tensor([30.0, 40.0]))


def test_metrics_on_a_hand_made_example():
    names = ["cat", "dog", "car", "bus", "cup", "pen"]
    # 5 samples; rows are scores over 6 classes. Class "pen" has no samples.
    scores = torch.tensor([
        [9, 1, 2, 3, 4, 5],   # true cat -> cat (top1 hit)
        [9, 8, 1, 1, 1, 1],   # true dog -> cat (dog 2nd: top5 hit)
        [1, 2, 9, 3, 4, 0],   # true car -> car
        [0, 9, 8, 7, 6, 5],   # true cat -> dog; cat ranked last: top5 miss
        [1, 1, 1, 2, 9, 1],   # true car -> cup; car among top5 (ties broken by index order is irrelevant: 1 < 2)
    ], dtype=torch.float32)
    labels = torch.tensor([0, 1, 2, 0, 2])
    m = compute_metrics(scores, labels, names)
    assert m["num_samples"] == 5 and m["top5_k"] == 5
    assert m["top1"] == pytest.approx(2 / 5)
    assert m["top5"] == pytest.approx(4 / 5)
    assert m["per_class_accuracy"] == {"cat": 0.5, "dog": 0.0, "car": 0.5, "bus": None, "cup": None, "pen": None}
    assert m["mean_class_accuracy"] == pytest.approx((0.5 + 0.0 + 0.5) / 3)
    assert m["per_class_support"]["cat"] == 2
    cm = m["confusion_matrix"]
    assert cm[0] == [1, 1, 0, 0, 0, 0]  # cat: once cat, once dog
    assert cm[1] == [1, 0, 0, 0, 0, 0]  # dog: predicted cat
    assert cm[2] == [0, 0, 1, 0, 1, 0]  # car: car, cup
    assert sum(map(sum, cm)) == 5
    with pytest.raises(ValueError, match=r"\[N, 6\]"):
        compute_metrics(scores[:, :4], labels, names)
    with pytest.raises(ValueError, match="labels must lie"):
        compute_metrics(scores, torch.tensor([0, 1, 2, 0, 6]), names)


def test_accuracy_by_box_size():
    scores = torch.eye(3)[[0, 1, 2, 0, 1]]  # predictions 0 1 2 0 1
    labels = torch.tensor([0, 0, 2, 0, 2])   # correct   y n y y n
    sizes = torch.tensor([10.0, 20.0, 40.0, 200.0, 47.9])
    bins = compute_metrics(scores, labels, ["a", "b", "c"], box_sizes=sizes)["accuracy_by_box_size"]
    assert bins == [
        {"min_px": 0, "max_px": 16, "num_samples": 1, "top1": 1.0},
        {"min_px": 16, "max_px": 24, "num_samples": 1, "top1": 0.0},
        {"min_px": 32, "max_px": 48, "num_samples": 2, "top1": 0.5},
        {"min_px": 128, "max_px": None, "num_samples": 1, "top1": 1.0},
    ]


def test_top5_with_fewer_than_five_classes():
    m = compute_metrics(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([0, 0]), ["a", "b"])
    assert (m["top1"], m["top5"], m["top5_k"]) == (0.5, 1.0, 2)


def test_confusion_matrix_png(tmp_path):
    path = plot_confusion_matrix([[3, 1], [0, 4]], ["a", "b"], tmp_path / "out" / "cm.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in path.parent.iterdir()] == ["cm.png"]  # no temporary left behind


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pt")
    first = (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist())
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()) == first
