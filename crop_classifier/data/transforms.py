"""Crop normalisation and training augmentation (albumentations, on uint8 HxWx3 crops)."""
from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "build_train_transform", "normalize"]

from ..models.inception_v3 import IMAGENET_MEAN, IMAGENET_STD


def normalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """``(x - mean) / std`` per channel of float crops in [0, 1], ``[3, H, W]`` or ``[N, 3, H, W]``."""
    if not x.is_floating_point():
        raise TypeError(f"normalize expects float crops in [0, 1], got {x.dtype}")
    if x.dim() not in (3, 4) or x.shape[-3] != 3:
        raise ValueError(f"normalize expects [3, H, W] or [N, 3, H, W], got {tuple(x.shape)}")
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x - m) / s


def build_train_transform(input_size: int, *, flip: bool = True, color: bool = True, scale_aspect: bool = True,
                          low_resolution: bool = True):
    """Augmentation for ``input_size`` square uint8 crops, returned at the same size.

    Horizontal flips; colour jitter; scale/aspect jitter (a random 65-100 % region of 3:4-4:3
    aspect, resized back, half the time); and blur or downscale-then-upscale (to a quarter of
    the resolution at most) a third of the time, so crops of large objects also look like the
    low-resolution crops small objects give.
    """
    import albumentations as A
    import cv2

    size = int(input_size)
    ops = []
    if flip:
        ops.append(A.HorizontalFlip(p=0.5))
    if scale_aspect:
        ops.append(A.RandomResizedCrop(size=(size, size), scale=(0.65, 1.0), ratio=(3 / 4, 4 / 3),
                                       interpolation=cv2.INTER_LINEAR, p=0.5))
    if color:
        ops.append(A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.03, p=0.8))
    if low_resolution:
        ops.append(A.OneOf([
            A.GaussianBlur(blur_limit=(3, 5), p=1.0),
            A.Downscale(scale_range=(0.25, 0.75),
                        interpolation_pair={"downscale": cv2.INTER_AREA, "upscale": cv2.INTER_LINEAR}, p=1.0),
        ], p=1 / 3))
    return A.Compose(ops)
