"""Inference-time rewrites that return a new module and leave the original untouched.

``fuse_conv_bn`` folds every eval-mode BatchNorm that directly consumes a convolution's output into that
convolution (``W' = W * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``). Inception-v3 has
a BN after each of its 94 convolutions, so this removes 94 memory-bound passes per forward pass.

The conv -> BN pairs are found from the model's torch.fx graph, so any traceable model works (ours,
torchvision's ``inception_v3``, plain ``nn.Sequential``). The rewrite itself is applied to a deep copy of
the original module tree (not to the traced GraphModule), so the result keeps its class, its attributes
(``input_size``, ...) and its other methods (``forward_features``). Modules the eval forward does not call
(Inception's auxiliary head) are not in the graph and are left as they are.
"""
from __future__ import annotations

import copy
from typing import List, Tuple

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from ..errors import FusionError

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _plain(module: nn.Module, bases: tuple) -> bool:
    return isinstance(module, bases) and any(type(module).forward is b.forward for b in bases)


def find_conv_bn_pairs(model: nn.Module) -> List[Tuple[str, str]]:
    """Qualified names ``(conv, bn)`` where the BN is the only consumer of the conv's output and each module
    is called exactly once (a shared conv or BN cannot be folded without changing other call sites)."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as e:  # fx raises many types (TraceError, TypeError, ...) on untraceable code
        raise FusionError(
            f"fuse_conv_bn: {type(model).__name__} is not torch.fx traceable ({type(e).__name__}: {e}); "
            "fuse its traceable submodules instead"
        ) from e
    modules = dict(model.named_modules())
    calls: dict = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BNS):
            continue
        src = node.args[0] if node.args else None
        if not isinstance(src, fx.Node) or src.op != "call_module":
            continue
        conv = modules.get(src.target)
        bn = modules[node.target]
        if not _plain(conv, _CONVS) or not _plain(bn, _BNS):
            continue  # a subclass with its own forward may not be a plain affine conv / BN
        if len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1:
            continue
        if conv.out_channels != bn.num_features or not bn.track_running_stats or bn.running_mean is None:
            continue
        pairs.append((src.target, node.target))
    return pairs


def _set_submodule(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


@torch.no_grad()
def fuse_conv_bn(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each BN folded into the convolution it follows (the BN becomes
    ``nn.Identity``). Outputs match the original in eval mode up to float rounding. Training the result
    is not meaningful (the BN statistics are gone), so it is returned in eval mode."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse_conv_bn expects an nn.Module, got {type(model).__name__}")
    fused = copy.deepcopy(model).eval()
    for conv_name, bn_name in find_conv_bn_pairs(fused):
        conv = fused.get_submodule(conv_name)
        bn = fused.get_submodule(bn_name)
        _set_submodule(fused, conv_name, fuse_conv_bn_eval(conv, bn))
        _set_submodule(fused, bn_name, nn.Identity())
    return fused


def optimize_for_inference(model: nn.Module, *, fuse: bool = True, channels_last: bool = True) -> nn.Module:
    """The CPU/GPU inference form used by the benchmarks and the pipeline: an eval-mode copy, BN folded
    (``fuse``), weights in channels_last (``channels_last``; feed it channels_last input too, which oneDNN
    and cuDNN run without layout conversions). Run it under ``torch.inference_mode()``."""
    out = fuse_conv_bn(model) if fuse else copy.deepcopy(model).eval()
    if channels_last:
        out = out.to(memory_format=torch.channels_last)
    for p in out.parameters():
        p.requires_grad_(False)
    return out
