"""Size-adaptive routing: routes by native side, the shared-weight routed network, its inference form, the
second stage cropping each box at its route's size, and the multi-resolution batch sampler."""
import numpy as np
import pytest
import torch
from torch import nn

from crop_classifier.data.sampler import RoutedBatchSampler
from crop_classifier.errors import CheckpointError, ParameterError, UsageError
from crop_classifier.models import (ALL_ARCHITECTURES, STEMS, RoutedInceptionV3, Routes, build_classifier,
                                    create_classifier, model_meta, native_sides, save_checkpoint)
from crop_classifier.models.inference import (RoutedClassifier, build_inference_classifier,
                                              load_inference_classifier, routed_classifier)
from crop_classifier.models.routing import parse_thresholds
from crop_classifier.second_stage import SecondStage
from classifier_helpers import inference_form
from numerics import assert_fp32_close, softmax_bound

NAMES = list("abcde")


def _routed(seed=0):
    torch.manual_seed(seed)
    m = build_classifier("auto", len(NAMES), width=0.125)
    m.train()
    with torch.no_grad():  # non-trivial BN statistics, so folding them is tested
        for s in m.input_sizes:
            m(torch.rand(6, 3, s, s))
    return m.eval()


# ------------------------------------------------------------------------------------------------ routes
def test_routes_assign_by_native_side_with_geometric_mean_thresholds():
    r = Routes()
    assert r.archs == ("v3_79", "v3_151", "v3_299") and r.input_sizes == (79, 151, 299)
    assert r.thresholds == pytest.approx((109.2, 212.5))
    assert r.assign([10, 79, 109.2, 109.3, 212.5, 213, 5000]).tolist() == [0, 0, 0, 1, 1, 2, 2]
    assert r.sizes_for([40, 150, 400]).tolist() == [79, 151, 299]
    # native side: the longer side widened by the context on both sides
    sides = native_sides(torch.tensor([[0.0, 0, 100, 50], [10, 10, 10, 20]]), 0.1)
    assert sides.tolist() == pytest.approx([120.0, 12.0])
    two = Routes(("v3_79", "v3_299"), (150,))
    assert two.assign([149, 151]).tolist() == [0, 1] and Routes.from_meta({"routes": two.to_meta()}) == two
    assert Routes.from_meta({"arch": "v3_79"}) is None


@pytest.mark.parametrize("kwargs, match", [
    (dict(archs=("v3_151", "v3_79")), "ordered"),
    (dict(archs=("v3_79", "v9")), "unknown"),
    (dict(thresholds=(200, 100)), "increasing"),
    (dict(thresholds=(100,)), "2 increasing"),
    (dict(jitter=1.5), "jitter"),
])
def test_routes_reject_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Routes(**kwargs)


def test_parse_thresholds_names_the_flag():
    assert parse_thresholds("100, 200") == (100.0, 200.0)
    with pytest.raises(ValueError, match="--route-thresholds"):
        parse_thresholds("100,big")


def test_training_jitter_moves_the_stated_share_to_a_neighbouring_route():
    sides = np.full(20000, 150.0)  # route 1 (151), above its centre? no: 150 < 151 -> steps down to 79
    r = Routes(jitter=0.25)
    got = r.sample(sides, np.random.default_rng(0))
    assert set(np.unique(got).tolist()) == {0, 1}
    assert (got == 0).mean() == pytest.approx(0.25, abs=0.02)
    tiny = r.sample(np.full(1000, 10.0), np.random.default_rng(1))  # the first route can only step up
    assert set(np.unique(tiny).tolist()) == {0, 1}
    assert Routes().sample(sides, np.random.default_rng(0)).tolist() == [1] * 20000  # no jitter: assign


# ------------------------------------------------------------------------------------------------ network
def test_routed_network_has_one_weight_set_with_every_variant_s_names_and_shapes():
    assert "auto" in ALL_ARCHITECTURES
    m = create_classifier("auto", 5, width=0.125)
    v = create_classifier("v3_299", 5, width=0.125)
    assert isinstance(m, RoutedInceptionV3)
    assert {k: t.shape for k, t in m.state_dict().items()} == {k: t.shape for k, t in v.state_dict().items()}
    n_params = sum(p.numel() for p in m.parameters())
    m(torch.rand(2, 3, 151, 151))  # building a view adds no parameters
    assert sum(p.numel() for p in m.parameters()) == n_params == sum(p.numel() for p in v.parameters())


def test_routed_forward_at_each_size_equals_that_stem_with_the_same_weights():
    m = _routed()
    for arch, spec in STEMS.items():
        ref = build_classifier(arch, len(NAMES), width=0.125)
        ref.load_state_dict(m.state_dict())
        x = torch.rand(2, 3, spec.input_size, spec.input_size)
        torch.testing.assert_close(m(x), ref.eval()(x))
    with pytest.raises(ValueError, match="120 px"):
        m(torch.rand(1, 3, 120, 120))


def test_routed_training_updates_the_shared_weights_from_every_size():
    m = _routed().train()
    before = m.Mixed_5b.branch1x1.conv.weight.detach().clone()
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    for s in (79, 299):
        logits, aux = m(torch.rand(4, 3, s, s))
        (logits.sum() + aux.sum()).backward()
        assert m.Conv2d_1a_3x3.conv.weight.grad is not None
    opt.step()
    assert not torch.equal(before, m.Mixed_5b.branch1x1.conv.weight)
    assert m.route(299).training and m.route(299).Mixed_5b is m.Mixed_5b
    m.eval()
    assert not m.route(299).training


def test_checkpoints_cross_load_between_auto_and_a_stem_but_not_between_stems(tmp_path):
    m = _routed()
    path = save_checkpoint(tmp_path / "auto.pth", m, model_meta(m, "auto", NAMES))
    v79 = build_classifier("v3_79", len(NAMES), width=0.125, weights=path)
    torch.testing.assert_close(v79.fc.weight, m.fc.weight)
    p79 = save_checkpoint(tmp_path / "v79.pth", v79, model_meta(v79, "v3_79", NAMES))
    back = build_classifier("auto", len(NAMES), width=0.125, weights=p79)
    torch.testing.assert_close(back.Conv2d_1a_3x3.conv.weight, m.Conv2d_1a_3x3.conv.weight)
    with pytest.raises(CheckpointError, match="arch"):
        build_classifier("v3_151", len(NAMES), width=0.125, weights=p79)


# ------------------------------------------------------------------------------------------------ inference form
def test_inference_form_folds_once_and_matches_each_stem(tmp_path):
    m = _routed()
    meta = model_meta(m, "auto", NAMES, context=0.1, mode="square")
    assert meta["routes"] == {"archs": ["v3_79", "v3_151", "v3_299"], "input_sizes": [79, 151, 299],
                              "thresholds": [109.2, 212.5]} and meta["input_size"] == 79
    path = save_checkpoint(tmp_path / "auto.pth", m, meta)
    form = load_inference_classifier(path)
    assert isinstance(form, RoutedClassifier) and form.meta.arch == "auto" and form.crop.size == 79
    # one folded weight set: every route's body is the same module
    assert form.route(79).net.Mixed_6e is form.route(299).net.Mixed_6e
    for arch, spec in STEMS.items():
        ref = build_inference_classifier(
            build_classifier(arch, len(NAMES), width=0.125, weights=path).eval(), {**meta, "arch": arch,
                                                                                 "input_size": spec.input_size})
        x = torch.rand(3, 3, spec.input_size, spec.input_size)
        assert_fp32_close(form.route(spec.input_size).logits(x), ref.logits(x), what=arch)
        assert (form(x) - ref(x)).abs().max() <= softmax_bound(ref.logits(x))
        assert form.route(spec.input_size).meta.arch == arch
    other = load_inference_classifier(path, route_thresholds=(90, 300))
    assert other.routes.thresholds == (90.0, 300.0) and other.meta.extra["routes"]["thresholds"] == [90.0, 300.0]
    with pytest.raises(ParameterError, match="^route_thresholds: "):
        load_inference_classifier(path, route_thresholds=(300, 90))


class SizeNet(nn.Module):
    """Answers with the class of its own input size, so a test can see which route took a crop."""

    def __init__(self, size, label):
        super().__init__()
        self.input_size, self.label = size, label

    def forward(self, x):
        assert x.shape[-1] == self.input_size
        logits = torch.zeros(x.shape[0], len(NAMES))
        logits[:, self.label] = 10.0
        return logits


def _size_set(thresholds=None, **meta):
    forms = [inference_form(SizeNet(s, i), NAMES, s, arch=a, crop={"context": 0.1}, **meta)
             for i, (a, s) in enumerate((("v3_299", 299), ("v3_79", 79), ("v3_151", 151)))]
    return routed_classifier(forms, thresholds)


def test_routed_set_of_separate_classifiers_orders_routes_and_checks_them():
    routed = _size_set((100, 200))
    assert routed.routes.archs == ("v3_79", "v3_151", "v3_299") and routed.meta.arch == "auto"
    assert routed(torch.rand(2, 3, 151, 151)).argmax(1).tolist() == [2, 2]
    with pytest.raises(ValueError, match="no route takes 100 px"):
        routed(torch.rand(1, 3, 100, 100))
    a = inference_form(SizeNet(79, 0), NAMES, 79, arch="v3_79")
    b = inference_form(SizeNet(151, 0), list("vwxyz"), 151, arch="v3_151")
    with pytest.raises(UsageError, match="share their classes"):
        routed_classifier([a, b])
    c = inference_form(SizeNet(151, 0), NAMES, 151, arch="v3_151", crop={"context": 0.3})
    with pytest.raises(UsageError, match="crop alike"):
        routed_classifier([a, c])


def test_second_stage_crops_each_box_at_its_route_s_size():
    stage = SecondStage(_size_set(), NAMES, class_map="a=*", fusion="replace", nms_thresh=0)
    image = torch.randint(0, 255, (3, 600, 600), dtype=torch.uint8)
    # native sides with context 0.1: 36, 144, 360 px -> routes 79, 151, 299
    boxes = torch.tensor([[10.0, 10, 40, 40], [100, 100, 220, 220], [200, 200, 500, 500], [5, 300, 35, 330]])
    assert stage.crop_sizes(boxes).tolist() == [79, 151, 299, 79]
    out = stage.run([image], [boxes], [torch.zeros(4, dtype=torch.long)], [torch.full((4,), 0.9)])
    r = out.detections[0]
    assert out.num_crops == [4]
    by_index = dict(zip(r.index.tolist(), r.classes.tolist()))
    assert by_index == {0: 1, 1: 2, 2: 0, 3: 1}  # the class of the route that classified the box


# ------------------------------------------------------------------------------------------------ sampler
def test_routed_batch_sampler_one_size_per_batch_fixed_length_and_ranks_in_step():
    sides = np.exp(np.random.default_rng(0).uniform(np.log(10), np.log(400), 500))
    routes = Routes(jitter=0.2)
    single = RoutedBatchSampler(sides, routes, 16)
    ranks = [RoutedBatchSampler(sides, routes, 8, num_replicas=2, rank=k) for k in range(2)]
    for epoch in range(3):
        for s in (single, *ranks):
            s.set_epoch(epoch)
        batches = list(single)
        assert len(batches) == len(single) == 500 // 16 - 2
        assert all(len(b) == 16 and len({size for _, size in b}) == 1 for b in batches)
        assert len({i for b in batches for i, _ in b}) == 16 * len(batches)  # no sample twice in an epoch
        per_rank = [list(s) for s in ranks]
        assert len(per_rank[0]) == len(per_rank[1]) == len(ranks[0])
        # step k: both ranks at the same size (one global batch), disjoint samples
        for b0, b1 in zip(*per_rank):
            assert {s for _, s in b0} == {s for _, s in b1}
            assert not {i for i, _ in b0} & {i for i, _ in b1}
    # the routes are redrawn per epoch (jitter), deterministically
    single.set_epoch(0)
    first = list(single)
    single.set_epoch(1)
    assert list(single) != first
    single.set_epoch(0)
    assert list(single) == first
    ev = RoutedBatchSampler(sides, routes, 16, shuffle=False, drop_last=False)
    pairs = [p for b in ev for p in b]
    assert sorted(i for i, _ in pairs) == list(range(500))
    assert all(size == routes.sizes_for([sides[i]])[0] for i, size in pairs)  # evaluation: no jitter
