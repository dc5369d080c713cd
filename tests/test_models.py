"""The v3_79 / v3_151 / v3_299 family: grids, parameters, cost, torchvision parity, training, errors."""
import copy

import pytest
import torch
import torchvision
from fvcore.nn import FlopCountAnalysis

from crop_classifier.models import ARCHITECTURES, build_classifier
from numerics import assert_fp32_close

TV_PARAMS_WITH_AUX = 27_161_264  # torchvision inception_v3, 1000 classes
TV_PARAMS_NO_AUX = 23_834_568
GMACS = {"v3_299": 5.731, "v3_151": 5.731, "v3_79": 5.376}  # design.md stem table
STEM_SIDES = {  # after each stem layer: 1a, 2a, 2b, maxpool1, 3b, 4a, maxpool2
    "v3_299": [149, 147, 147, 73, 73, 71, 35],
    "v3_151": [149, 147, 147, 73, 73, 71, 35],
    "v3_79": [77, 75, 75, 75, 75, 73, 36],
}


@pytest.fixture(scope="module")
def tv_model():
    torch.manual_seed(0)
    m = torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=True)
    # Calibrate BN statistics once so eval activations are O(1), like trained weights, not ~1e9.
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = 1.0
    with torch.no_grad():
        m.train()(torch.randn(4, 3, 299, 299, generator=torch.Generator().manual_seed(2)))
    return m.eval()


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_stem_and_grid_sizes(name):
    m = build_classifier(name, 10, width=0.25).eval()
    x = torch.zeros(1, 3, m.input_size, m.input_size)
    sides = []
    with torch.no_grad():
        for layer in ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2"]:
            x = getattr(m, layer)(x)
            sides.append(x.shape[-1])
        assert sides == STEM_SIDES[name]
        grids = m.feature_grids(torch.zeros(1, 3, m.input_size, m.input_size))
    assert [g.shape[-1] for g in grids] == [STEM_SIDES[name][-1], STEM_SIDES[name][-1], 17, 8]
    assert m.input_size == {"v3_299": 299, "v3_151": 151, "v3_79": 79}[name]


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_full_width_params_and_keys_match_torchvision(name, tv_model):
    m = build_classifier(name)
    tv_sd, sd = tv_model.state_dict(), m.state_dict()
    assert all(k in sd and sd[k].shape == v.shape for k, v in tv_sd.items())
    # The only extra tensors are the BN of the auxiliary FC (BN-auxiliary).
    assert sorted(set(sd) - set(tv_sd)) == sorted(f"AuxLogits.bn.{s}" for s in ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"])
    n_without_aux_bn = sum(p.numel() for k, p in m.named_parameters() if not k.startswith("AuxLogits.bn."))
    assert n_without_aux_bn == TV_PARAMS_WITH_AUX == sum(p.numel() for p in tv_model.parameters())
    assert sum(p.numel() for p in build_classifier(name, aux_logits=False).parameters()) == TV_PARAMS_NO_AUX


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_flops_match_stem_table(name):
    m = build_classifier(name, aux_logits=False).eval()
    fl = FlopCountAnalysis(m, torch.zeros(1, 3, m.input_size, m.input_size))
    fl.unsupported_ops_warnings(False)
    fl.uncalled_modules_warnings(False)
    assert fl.total() / 1e9 == pytest.approx(GMACS[name], rel=0.005)


@pytest.mark.parametrize("transform_input", [False, True])
def test_v3_299_reproduces_torchvision_logits(tv_model, transform_input):
    tv_model.eval().transform_input = transform_input
    m = build_classifier("v3_299")
    m.load_state_dict(tv_model.state_dict(), strict=False)
    m.transform_input = transform_input
    m.eval()
    x = torch.randn(2, 3, 299, 299, generator=torch.Generator().manual_seed(1))
    # The reference is torchvision's network in float64: ours in float32 must be within float32 rounding of
    # it (tests/numerics.py: ulps per layer x depth x the logits' scale), on any CPU's kernels. The float32
    # torchvision model itself is about 4 ulps a layer off the float64 one; a bare 1e-4 was below that.
    with torch.no_grad():
        ref, ours = copy.deepcopy(tv_model).double()(x.double()), m(x)
    assert ours.shape == (2, 1000) and ours.dtype == torch.float32
    assert ref.std() > 1.0  # logits spread over whole units: a wrong network could not pass the bound
    assert_fp32_close(ours, ref, what=f"v3_299 vs torchvision (float64), transform_input={transform_input}")


@pytest.mark.parametrize("name", ["v3_79", "v3_151"])
def test_low_resolution_variants_run_torchvision_weights(name, tv_model):
    m = build_classifier(name, weights=None)
    from crop_classifier.models import load_imagenet_weights

    load_imagenet_weights(m, tv_model.state_dict())
    assert m.transform_input  # torchvision's Google weights expect [-1, 1]
    torch.testing.assert_close(m.Mixed_7c.branch_pool.conv.weight, tv_model.Mixed_7c.branch_pool.conv.weight)
    with torch.no_grad():
        out = m.eval()(torch.randn(1, 3, m.input_size, m.input_size))
    assert out.shape == (1, 1000) and torch.isfinite(out).all()


def test_train_mode_returns_aux_and_gradients_reach_stem():
    torch.manual_seed(0)
    m = build_classifier("v3_79", 7, width=0.25).train()
    logits, aux = m(torch.randn(4, 3, 79, 79))
    assert logits.shape == aux.shape == (4, 7)
    (logits.sum() + aux.sum()).backward()
    g = m.Conv2d_1a_3x3.conv.weight.grad
    assert g is not None and g.abs().sum() > 0
    assert m.AuxLogits.bn.weight.grad is not None and m.AuxLogits.bn.weight.grad.abs().sum() > 0


def test_width_quarter_trains_a_step():
    torch.manual_seed(0)
    m = build_classifier("v3_79", 3, width=0.25)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    x, y = torch.randn(8, 3, 79, 79), torch.randint(0, 3, (8,))
    before = m.Conv2d_1a_3x3.conv.weight.detach().clone()
    logits, aux = m(x)
    loss = torch.nn.functional.cross_entropy(logits, y) + 0.4 * torch.nn.functional.cross_entropy(aux, y)
    loss.backward()
    opt.step()
    assert not torch.equal(before, m.Conv2d_1a_3x3.conv.weight)
    assert m.Mixed_7c.out_channels == 512  # 2048 * 0.25


def test_without_aux_train_returns_logits_only():
    m = build_classifier("v3_151", 5, width=0.125, aux_logits=False).train()
    out = m(torch.randn(2, 3, 151, 151))
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)


def test_tracing_matches_eager():
    m = build_classifier("v3_79", 4, width=0.25).eval()
    x = torch.randn(2, 3, 79, 79)
    traced = torch.jit.trace(m, x)
    with torch.no_grad():
        torch.testing.assert_close(traced(torch.ones(3, 3, 79, 79)), m(torch.ones(3, 3, 79, 79)))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="v3_80"), "valid choices: v3_299, v3_151, v3_79"),
        (dict(name="v3_79", num_classes=0), "num_classes"),
        (dict(name="v3_79", num_classes=2.5), "num_classes"),
        (dict(name="v3_79", width=0), "width"),
        (dict(name="v3_79", width=float("nan")), "width"),
    ],
)
def test_bad_arguments_are_clear_errors(kwargs, match):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=match):
        build_classifier(name, **kwargs)
