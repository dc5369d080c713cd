"""A ResNet-18/34 FPN backbone of any width, for detectors that must train on a CPU in minutes.

Detectron2's ``build_resnet_backbone`` insists on 64 res2 channels for R-18/R-34; this builder takes
``MODEL.RESNETS.STEM_OUT_CHANNELS`` and ``RES2_OUT_CHANNELS`` as given (doubling per stage, as usual).
Half width (32) costs about a quarter of the backbone FLOPs.

It lives with the Detectron2 first stage (not in the plugin) because a plain first stage must build the
demo's detector without the plugin; Detectron2 is imported when a backbone is built or registered.
"""
from __future__ import annotations

BLOCKS = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3]}


def build_narrow_resnet(cfg, input_shape):
    from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

    r = cfg.MODEL.RESNETS
    if r.DEPTH not in BLOCKS:
        raise ValueError(f"build_narrow_resnet_fpn_backbone: MODEL.RESNETS.DEPTH must be 18 or 34, got {r.DEPTH}")
    stem = BasicStem(in_channels=input_shape.channels, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM)
    in_channels, out_channels, stages = r.STEM_OUT_CHANNELS, r.RES2_OUT_CHANNELS, []
    for idx, n in enumerate(BLOCKS[r.DEPTH]):
        stages.append(ResNet.make_stage(
            block_class=BasicBlock, num_blocks=n, stride_per_block=[1 if idx == 0 else 2] + [1] * (n - 1),
            in_channels=in_channels, out_channels=out_channels, norm=r.NORM,
        ))
        in_channels, out_channels = out_channels, out_channels * 2
    return ResNet(stem, stages, out_features=r.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


def build_narrow_resnet_fpn_backbone(cfg, input_shape):
    from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool

    return FPN(
        bottom_up=build_narrow_resnet(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def register_backbones() -> None:
    """Adds ``build_narrow_resnet_fpn_backbone`` to Detectron2's ``BACKBONE_REGISTRY`` (idempotent)."""
    from detectron2.modeling import BACKBONE_REGISTRY

    if build_narrow_resnet_fpn_backbone.__name__ not in BACKBONE_REGISTRY:
        BACKBONE_REGISTRY.register(build_narrow_resnet_fpn_backbone)
