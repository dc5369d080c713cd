import copy

import pytest
import torch
import torchvision
from torch import nn

from crop_classifier.models import build_classifier
from crop_classifier.errors import FusionError
from crop_classifier.models.fuse import find_conv_bn_pairs, fuse_conv_bn, optimize_for_inference
from numerics import INCEPTION_DEPTH, assert_fp32_close


@pytest.fixture(autouse=True)
def _one_thread():
    # Numerics only: one thread avoids OpenMP stalls when other processes share the cores.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _randomise_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial BN statistics and affine parameters, so a wrong fold changes the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def float64(model: nn.Module) -> nn.Module:
    """A float64 copy: the reference without rounding of its own (tests/numerics.py)."""
    return copy.deepcopy(model).double().eval()


def _count(model, cls):
    return sum(isinstance(m, cls) for m in model.modules())


@pytest.mark.parametrize("arch", ["v3_79", "v3_151", "v3_299"])
def test_fused_inception_matches_original(arch):
    torch.manual_seed(0)
    model = _randomise_bn(build_classifier(arch, num_classes=7, width=0.125)).eval()
    n_bn2d = _count(model, nn.BatchNorm2d)
    fused = fuse_conv_bn(model)
    size = model.input_size
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        ref, out = float64(model)(x.double()), fused(x)
    assert out.shape == (2, 7)
    assert_fp32_close(out, ref, what=f"{arch} folded vs unfolded (float64)")
    # Every BN of the eval forward is gone; the aux head (not called in eval, so not in the traced graph) is
    # left as it was. The original is intact.
    assert _count(fused, nn.BatchNorm2d) == _count(fused.AuxLogits, nn.BatchNorm2d) == 2
    assert _count(model, nn.BatchNorm2d) == n_bn2d == 94 + 2  # 94 body convs + the aux head's two
    body = [n for n, m in fused.named_modules() if hasattr(m, "conv") and not n.startswith("AuxLogits")]
    assert len(body) == 94
    assert all(fused.get_submodule(n).conv.bias is not None for n in body)
    assert all(model.get_submodule(n).conv.bias is None for n in body)
    # Still the same class with its attributes and methods.
    assert type(fused) is type(model) and fused.input_size == size and not fused.training
    with torch.no_grad():
        assert_fp32_close(fused.forward_features(x)[0], float64(model).forward_features(x.double())[0],
                          depth=INCEPTION_DEPTH - 1, what="features")


def test_fuses_torchvision_inception_v3():
    torch.manual_seed(0)
    tv = _randomise_bn(torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)).eval()
    pairs = find_conv_bn_pairs(tv)
    assert len(pairs) == 94 and pairs[0] == ("Conv2d_1a_3x3.conv", "Conv2d_1a_3x3.bn")
    fused = fuse_conv_bn(tv)
    x = torch.randn(1, 3, 299, 299)
    with torch.no_grad():
        assert_fp32_close(fused(x), float64(tv)(x.double()), what="torchvision folded vs unfolded (float64)")


def test_only_direct_exclusive_conv_bn_pairs_are_folded():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=1)
            self.bn_a = nn.BatchNorm2d(4)
            self.b = nn.Conv2d(4, 4, 1)  # its output is also used by the residual: cannot fold
            self.bn_b = nn.BatchNorm2d(4)
            self.bn_c = nn.BatchNorm2d(4)  # follows a ReLU, not a conv

        def forward(self, x):
            y = self.bn_a(self.a(x))
            z = self.b(y)
            return self.bn_c(torch.relu(self.bn_b(z) + z))

    net = _randomise_bn(Net()).eval()
    assert find_conv_bn_pairs(net) == [("a", "bn_a")]
    fused = fuse_conv_bn(net)
    assert isinstance(fused.bn_a, nn.Identity) and isinstance(fused.bn_b, nn.BatchNorm2d)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), rtol=1e-5, atol=1e-5)


def test_training_mode_input_is_not_mutated_and_result_is_eval():
    model = build_classifier("v3_79", num_classes=3, width=0.0625).train()
    fused = fuse_conv_bn(model)
    assert model.training and not fused.training
    assert _count(model, nn.BatchNorm2d) > 0


def test_untraceable_model_names_the_problem():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow: fx cannot trace it
                return self.bn(self.conv(x))
            return x

    with pytest.raises(FusionError, match="DataDependent is not torch.fx traceable"):
        fuse_conv_bn(DataDependent())
    with pytest.raises(TypeError, match="nn.Module"):
        fuse_conv_bn("model")


def test_optimize_for_inference_channels_last_and_frozen():
    torch.manual_seed(0)
    model = _randomise_bn(build_classifier("v3_79", num_classes=5, width=0.125)).eval()
    opt = optimize_for_inference(model)
    assert all(not p.requires_grad for p in opt.parameters())
    assert opt.Conv2d_1a_3x3.conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(3, 3, 79, 79)
    with torch.inference_mode():
        out = opt(x.contiguous(memory_format=torch.channels_last))
    with torch.no_grad():
        ref = float64(model)(x.double())
    assert_fp32_close(out, ref, what="inference form vs the model in float64")
