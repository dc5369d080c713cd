"""Crop augmentation and normalisation."""
import random

import cv2
import numpy as np
import pytest
import torch

from crop_classifier.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_train_transform, normalize


def crop(size, seed=0):
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), (size, size), interpolation=cv2.INTER_CUBIC)


@pytest.mark.parametrize("size", [33, 79, 151])
def test_train_transform_keeps_size_and_dtype(size):
    t = build_train_transform(size)
    random.seed(0)
    np.random.seed(0)
    outs = [t(image=crop(size, k))["image"] for k in range(12)]
    assert all(o.shape == (size, size, 3) and o.dtype == np.uint8 for o in outs)
    assert any(not np.array_equal(o, crop(size, k)) for k, o in enumerate(outs))


def test_flip_only_gives_the_crop_or_its_mirror():
    t = build_train_transform(24, color=False, scale_aspect=False, low_resolution=False)
    c = crop(24, 3)
    random.seed(1)
    np.random.seed(1)
    outs = [t(image=c)["image"] for _ in range(20)]
    same = sum(np.array_equal(o, c) for o in outs)
    mirrored = sum(np.array_equal(o, c[:, ::-1]) for o in outs)
    assert same + mirrored == 20 and same > 0 and mirrored > 0


def test_low_resolution_ops_remove_fine_detail():
    t = build_train_transform(64, flip=False, color=False, scale_aspect=False)
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255
    random.seed(2)
    np.random.seed(2)
    outs = [t(image=stripes)["image"].astype(np.float32) for _ in range(30)]
    # About a third of the crops are blurred or downscaled: the 1 px stripes lose most of their contrast.
    softened = sum(np.abs(np.diff(o[..., 0], axis=1)).mean() < 100 for o in outs)
    assert 3 <= softened <= 20


def test_normalize_matches_imagenet_statistics():
    x = torch.rand(2, 3, 5, 5)
    y = normalize(x)
    ref = (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.allclose(y, ref) and torch.allclose(normalize(x[0]), ref[0])
    assert torch.allclose(normalize(torch.tensor(IMAGENET_MEAN).view(3, 1, 1)), torch.zeros(3, 1, 1), atol=1e-6)
    with pytest.raises(TypeError):
        normalize(torch.zeros(3, 4, 4, dtype=torch.uint8))
    with pytest.raises(ValueError):
        normalize(torch.zeros(4, 4))
