"""Inception-v3 (Szegedy et al., "Rethinking the Inception Architecture", 2016) with the Section 9 stems.

The body, and every parameter name and shape at width 1.0, follow torchvision's ``inception_v3`` so its
ImageNet weights (or timm's, which use the same names) load into all three variants. Only the stem's
strides/pooling differ between variants, and those carry no parameters.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# torchvision's transform_input (Google's weights expect [-1, 1]) undoes the default ImageNet normalisation.
from ..structures import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class StemSpec:
    """Section 9's stems: the receptive field shrinks by dropping early strides, not channels."""

    input_size: int
    first_stride: int  # Conv2d_1a_3x3
    first_pool: bool  # maxpool1 after Conv2d_2b_3x3
    grid: int  # side of the first Inception (35x35 / 36x36) grid


STEMS = {
    "v3_299": StemSpec(input_size=299, first_stride=2, first_pool=True, grid=35),
    "v3_151": StemSpec(input_size=151, first_stride=1, first_pool=True, grid=35),
    "v3_79": StemSpec(input_size=79, first_stride=1, first_pool=False, grid=36),
}


class BasicConv2d(nn.Module):
    """Conv (no bias) + BN (eps 1e-3, as the Google weights) + ReLU: BN after every convolution."""

    def __init__(self, in_ch: int, out_ch: int, **kwargs) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(out_ch, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class _Width:
    """Scales channel counts; width 1.0 is exactly torchvision's."""

    def __init__(self, width: float) -> None:
        self.width = width

    def __call__(self, c: int) -> int:
        return max(1, int(round(c * self.width)))


class InceptionA(nn.Module):
    """35x35 block (Fig. 5): the 5x5 factorised into two 3x3 in the double branch."""

    def __init__(self, in_ch: int, pool_features: int, w: _Width) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, w(64), kernel_size=1)
        self.branch5x5_1 = BasicConv2d(in_ch, w(48), kernel_size=1)
        self.branch5x5_2 = BasicConv2d(w(48), w(64), kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, w(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(w(64), w(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(w(96), w(96), kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(in_ch, w(pool_features), kernel_size=1)
        self.out_channels = w(64) + w(64) + w(96) + w(pool_features)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """35 -> 17 grid reduction (Fig. 10): strided convs in parallel with a max-pool."""

    def __init__(self, in_ch: int, w: _Width) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(in_ch, w(384), kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, w(64), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(w(64), w(96), kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(w(96), w(96), kernel_size=3, stride=2)
        self.out_channels = w(384) + w(96) + in_ch

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """17x17 block (Fig. 6) with n = 7: 7x7 convolutions factorised into 1x7 and 7x1."""

    def __init__(self, in_ch: int, channels_7x7: int, w: _Width) -> None:
        super().__init__()
        c7 = w(channels_7x7)
        self.branch1x1 = BasicConv2d(in_ch, w(192), kernel_size=1)
        self.branch7x7_1 = BasicConv2d(in_ch, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, w(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, w(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_ch, w(192), kernel_size=1)
        self.out_channels = 4 * w(192)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        bd = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(bd))))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b7, bd, bp], 1)


class InceptionD(nn.Module):
    """17 -> 8 grid reduction (Fig. 10)."""

    def __init__(self, in_ch: int, w: _Width) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_ch, w(192), kernel_size=1)
        self.branch3x3_2 = BasicConv2d(w(192), w(320), kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_ch, w(192), kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(w(192), w(192), kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(w(192), w(192), kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(w(192), w(192), kernel_size=3, stride=2)
        self.out_channels = w(320) + w(192) + in_ch

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """8x8 block with expanded filter banks (Fig. 7): 1x3 and 3x1 side by side, for high-dimensional output."""

    def __init__(self, in_ch: int, w: _Width) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(in_ch, w(320), kernel_size=1)
        self.branch3x3_1 = BasicConv2d(in_ch, w(384), kernel_size=1)
        self.branch3x3_2a = BasicConv2d(w(384), w(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(w(384), w(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_ch, w(448), kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(w(448), w(384), kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(w(384), w(384), kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(w(384), w(384), kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_ch, w(192), kernel_size=1)
        self.out_channels = w(320) + 4 * w(384) + w(192)

    def forward(self, x: Tensor) -> Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
        return torch.cat([b1, b3, bd, bp], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier on the 17x17 grid. BN-auxiliary (paper Section 7): the FC's input is
    batch-normalised too (``bn``, the only key torchvision's checkpoint lacks)."""

    def __init__(self, in_ch: int, num_classes: int, w: _Width) -> None:
        super().__init__()
        self.conv0 = BasicConv2d(in_ch, w(128), kernel_size=1)
        self.conv1 = BasicConv2d(w(128), w(768), kernel_size=5)
        self.conv1.stddev = 0.01  # type: ignore[assignment]
        self.bn = nn.BatchNorm1d(w(768), eps=0.001)
        self.fc = nn.Linear(w(768), num_classes)
        self.fc.stddev = 0.001  # type: ignore[assignment]

    def forward(self, x: Tensor) -> Tensor:
        x = F.avg_pool2d(x, kernel_size=5, stride=3)  # 17 -> 5
        x = self.conv1(self.conv0(x))  # 5 -> 1
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(self.bn(x))


class InceptionV3(nn.Module):
    """Inception-v3 for one of the Section 9 stems (``STEMS``); ``width`` scales every channel count."""

    def __init__(
        self,
        stem: StemSpec,
        num_classes: int = 1000,
        *,
        width: float = 1.0,
        aux_logits: bool = True,
        dropout: float = 0.5,
        transform_input: bool = False,
    ) -> None:
        super().__init__()
        w = _Width(width)
        self.stem = stem
        self.input_size = stem.input_size
        self.width = width
        self.num_classes = num_classes
        self.aux_logits = aux_logits
        # torchvision's Google weights expect inputs in [-1, 1]; with this set, ImageNet-normalised input is
        # converted inside the model, exactly as torchvision does for its pretrained inception_v3.
        self.transform_input = transform_input

        self.Conv2d_1a_3x3 = BasicConv2d(3, w(32), kernel_size=3, stride=stem.first_stride)
        self.Conv2d_2a_3x3 = BasicConv2d(w(32), w(32), kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(w(32), w(64), kernel_size=3, padding=1)
        self.maxpool1 = nn.MaxPool2d(kernel_size=3, stride=2) if stem.first_pool else nn.Identity()
        self.Conv2d_3b_1x1 = BasicConv2d(w(64), w(80), kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(w(80), w(192), kernel_size=3)
        self.maxpool2 = nn.MaxPool2d(kernel_size=3, stride=2)

        self.Mixed_5b = InceptionA(w(192), 32, w)
        self.Mixed_5c = InceptionA(self.Mixed_5b.out_channels, 64, w)
        self.Mixed_5d = InceptionA(self.Mixed_5c.out_channels, 64, w)
        self.Mixed_6a = InceptionB(self.Mixed_5d.out_channels, w)
        c17 = self.Mixed_6a.out_channels
        self.Mixed_6b = InceptionC(c17, 128, w)
        self.Mixed_6c = InceptionC(self.Mixed_6b.out_channels, 160, w)
        self.Mixed_6d = InceptionC(self.Mixed_6c.out_channels, 160, w)
        self.Mixed_6e = InceptionC(self.Mixed_6d.out_channels, 192, w)
        c17 = self.Mixed_6e.out_channels
        self.AuxLogits = InceptionAux(c17, num_classes, w) if aux_logits else None
        self.Mixed_7a = InceptionD(c17, w)
        self.Mixed_7b = InceptionE(self.Mixed_7a.out_channels, w)
        self.Mixed_7c = InceptionE(self.Mixed_7b.out_channels, w)
        self.num_features = self.Mixed_7c.out_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.num_features, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=float(getattr(m, "stddev", 0.1)), a=-2, b=2)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _transform_input(self, x: Tensor) -> Tensor:
        # ImageNet mean/std normalisation -> (x - 0.5) / 0.5, per channel.
        mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
        std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
        return (x * std + mean - 0.5) / 0.5

    def stem_features(self, x: Tensor) -> Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(self.maxpool1(x)))
        return self.maxpool2(x)

    def feature_grids(self, x: Tensor) -> List[Tensor]:
        """Activations after the stem, the 35/36 grid, the 17 grid and the 8 grid (for tests and probes)."""
        if self.transform_input:
            x = self._transform_input(x)
        s = self.stem_features(x)
        g35 = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(s)))
        g17 = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(g35)))))
        g8 = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(g17)))
        return [s, g35, g17, g8]

    def forward_features(self, x: Tensor) -> Tuple[Tensor, Tensor]:
        """Returns (pooled features [N, C], 17x17 grid for the auxiliary head)."""
        if self.transform_input:
            x = self._transform_input(x)
        x = self.stem_features(x)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        g17 = self.Mixed_6e(self.Mixed_6d(self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))))
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(g17)))
        return torch.flatten(self.avgpool(x), 1), g17

    def forward(self, x: Tensor):
        """Eval: logits ``[N, num_classes]``. Train with aux: ``(logits, aux_logits)``."""
        feats, g17 = self.forward_features(x)
        logits = self.fc(self.dropout(feats))
        if self.training and self.AuxLogits is not None:
            return logits, self.AuxLogits(g17)
        return logits

    def with_stem(self, stem: StemSpec) -> "InceptionV3":
        """A view of this network with another Section 9 stem: a plain ``InceptionV3`` sharing every
        parameter, buffer and submodule, except ``Conv2d_1a_3x3``'s stride (its weights still shared) and
        ``maxpool1``, which carry no parameters. Training either trains both; works on a BN-folded copy too."""
        view = copy.copy(self)  # shallow: the same submodule objects...
        view.__class__ = InceptionV3  # (a routed network's view is a plain, traceable one)
        view.__dict__.pop("_views", None)
        view._modules = dict(self._modules)  # ...in a dict of its own, so replacing two leaves touches only it
        first = copy.copy(self.Conv2d_1a_3x3)
        first._modules = dict(first._modules)
        conv = copy.copy(first.conv)  # shares its _parameters dict: the same weight (and folded bias) objects
        conv.stride = (stem.first_stride, stem.first_stride)
        first._modules["conv"] = conv
        view._modules["Conv2d_1a_3x3"] = first
        view._modules["maxpool1"] = nn.MaxPool2d(kernel_size=3, stride=2) if stem.first_pool else nn.Identity()
        view.stem, view.input_size = stem, stem.input_size
        return view


class RoutedInceptionV3(InceptionV3):
    """One weight set, several Section 9 stems: ``forward`` runs the stem whose input size is the input's
    side (79 -> ``v3_79``'s, 151 -> ``v3_151``'s, 299 -> ``v3_299``'s), so multi-resolution batches train the
    same parameters. Its ``state_dict`` is exactly a single-stem network's (names and shapes), so ImageNet
    weights and every variant's checkpoints load into it and it loads into them. ``route(size)`` gives the
    plain ``InceptionV3`` view for one input size (export, BN folding, tracing)."""

    def __init__(self, stems: Sequence[StemSpec], num_classes: int = 1000, **kwargs) -> None:
        stems = tuple(sorted(stems, key=lambda s: s.input_size))
        if not stems or len({s.input_size for s in stems}) != len(stems):
            raise ValueError(f"routed Inception-v3 needs stems of distinct input sizes, got {stems}")
        super().__init__(stems[0], num_classes, **kwargs)
        self.stems = stems
        self.input_sizes = tuple(s.input_size for s in stems)

    def route(self, size: int) -> InceptionV3:
        """The view that takes ``size`` px inputs (built once per size and kept out of the module tree, so
        ``state_dict`` and ``parameters()`` list each weight once)."""
        spec = next((s for s in self.stems if s.input_size == int(size)), None)
        if spec is None:
            raise ValueError(f"routed classifier: no stem takes {int(size)} px inputs (routes: {list(self.input_sizes)})")
        views: Dict[int, InceptionV3] = self.__dict__.setdefault("_views", {})
        if spec.input_size not in views:
            views[spec.input_size] = self.with_stem(spec)
        view = views[spec.input_size]
        view.training = self.training  # the shared submodules follow .train()/.eval(); the view object itself not
        return view

    def forward(self, x: Tensor):
        return self.route(int(x.shape[-1]))(x)
