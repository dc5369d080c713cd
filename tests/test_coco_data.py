"""COCO crop samples, the crop dataset (decode once per image, same crops as inference), jitter, sampler."""
import json
from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader

from crop_classifier.crops import extract_crops
from crop_classifier.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SYNTHETIC_CLASSES,
    CropDataset,
    ImageGroupedBatchSampler,
    build_train_transform,
    collate_identity,
    generate_scenes,
    jitter_boxes,
    load_coco_samples,
    read_rgb,
)
from crop_classifier.data import coco as coco_mod


def box_iou(a, b):
    """Element-wise IoU of two [N, 4] XYXY arrays (torchvision's pairwise IoU, its diagonal)."""
    from torchvision.ops import box_iou as pairwise

    return pairwise(torch.from_numpy(a), torch.from_numpy(b)).diagonal().numpy()


def _coco128(coco128):
    ann = coco128 / "annotations" / "instances_train2017.json"
    return ann, coco128 / "images", json.loads(ann.read_text())


def _clipped_min_side(a, images):
    im = images[a["image_id"]]
    x, y, w, h = a["bbox"]
    cw = min(max(x + w, 0), im["width"]) - min(max(x, 0), im["width"])
    ch = min(max(y + h, 0), im["height"]) - min(max(y, 0), im["height"])
    return min(cw, ch)


def test_coco128_non_crowd_boxes_in_category_order(coco128):
    ann, image_dir, data = _coco128(coco128)
    s = load_coco_samples(ann, image_dir)
    expected = [a for a in data["annotations"] if not a["iscrowd"]]
    assert len(s) == len(expected) and s.skipped["crowd"] == len(data["annotations"]) - len(expected)
    assert s.class_names == [c["name"] for c in sorted(data["categories"], key=lambda c: c["id"])]
    name_of = {c["id"]: c["name"] for c in data["categories"]}
    by_id = {a["id"]: a for a in expected}
    for path, box, label, aid in s.samples:
        a = by_id[aid]
        assert s.class_names[label] == name_of[a["category_id"]]
        x, y, w, h = a["bbox"]
        assert np.allclose(box, [x, y, x + w, y + h], atol=1e-3) and box.dtype == np.float32
        assert path.endswith(next(im["file_name"] for im in data["images"] if im["id"] == a["image_id"]))
    # Grouped by image: the index into image_paths never goes back.
    assert np.all(np.diff(s.image_index) >= 0)
    assert all(s.image_paths[i] == smp[0] for i, smp in zip(s.image_index, s.samples))
    # With crowd regions kept, every annotation is a sample.
    assert len(load_coco_samples(ann, image_dir, skip_crowd=False)) == len(data["annotations"])


def test_class_subset_order_and_min_size(coco128):
    ann, image_dir, data = _coco128(coco128)
    s = load_coco_samples(ann, image_dir, class_names=["dog", "person"])
    assert s.class_names == ["dog", "person"]
    cat = {c["name"]: c["id"] for c in data["categories"]}
    want = Counter(a["category_id"] for a in data["annotations"] if not a["iscrowd"])
    assert Counter(s.labels.tolist()) == {0: want[cat["dog"]], 1: want[cat["person"]]}
    assert s.skipped["other_class"] == sum(want.values()) - want[cat["dog"]] - want[cat["person"]]
    images = {im["id"]: im for im in data["images"]}
    big = load_coco_samples(ann, image_dir, min_size=32)
    sides = [_clipped_min_side(a, images) for a in data["annotations"] if not a["iscrowd"]]
    assert len(big) == sum(v >= 32 for v in sides) and 0 < len(big) < len(sides)
    assert all(min(b[2] - b[0], b[3] - b[1]) >= 32 for _, b, _, _ in big.samples)
    with pytest.raises(ValueError, match="unknown class names.*'dragon'.*valid names.*'person'"):
        load_coco_samples(ann, image_dir, class_names=["person", "dragon"])


def _write(tmp_path, **overrides):
    data = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 100, "height": 80}],
        "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [10, 10, 20, 20], "iscrowd": 0}],
        "categories": [{"id": 3, "name": "thing"}],
    }
    data.update(overrides)
    p = tmp_path / "ann.json"
    p.write_text(json.dumps(data))
    return p


@pytest.mark.parametrize("ann, message", [
    ({"id": 7, "image_id": 1, "category_id": 3}, r"annotation id 7: missing key 'bbox'"),
    ({"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3]}, r"annotation id 7: bbox must be 4 finite"),
    ({"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 2, "x", 4]}, r"annotation id 7: bbox must be 4 finite"),
    ({"id": 7, "image_id": 1, "category_id": 3, "bbox": [1, 2, -3, 4]}, r"annotation id 7: bbox has a negative"),
    ({"id": 7, "image_id": 9, "category_id": 3, "bbox": [1, 2, 3, 4]}, r"annotation id 7: image_id 9 is not in"),
    ({"id": 7, "image_id": 1, "category_id": 5, "bbox": [1, 2, 3, 4]}, r"annotation id 7: category_id 5 is not in"),
    ({"image_id": 1, "category_id": 3, "bbox": [1, 2, 3, 4]}, r"annotations\[0\]: missing key 'id'"),
])
def test_bad_annotations_name_the_entry(tmp_path, ann, message):
    p = _write(tmp_path, annotations=[ann])
    with pytest.raises(ValueError, match=message):
        load_coco_samples(p, tmp_path)


def test_bad_files_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_coco_samples(tmp_path / "missing.json", tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_coco_samples(bad, tmp_path)
    p = _write(tmp_path)
    data = json.loads(p.read_text())
    del data["categories"]
    p.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="missing key 'categories'"):
        load_coco_samples(p, tmp_path)
    p = _write(tmp_path, categories=[{"id": 3, "name": "a"}, {"id": 4, "name": "a"}])
    with pytest.raises(ValueError, match="name 'a' appears twice"):
        load_coco_samples(p, tmp_path)
    ds = CropDataset(load_coco_samples(_write(tmp_path), tmp_path), 16)
    with pytest.raises(FileNotFoundError, match="a.jpg: no such file"):
        ds[0]


def test_boxes_are_clipped_and_empty_ones_dropped(tmp_path):
    anns = [
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [-5, 70, 30, 30]},  # clipped to [0, 70, 25, 80]
        {"id": 2, "image_id": 1, "category_id": 3, "bbox": [10, 10, 0, 5]},  # zero width
        {"id": 3, "image_id": 1, "category_id": 3, "bbox": [120, 10, 5, 5]},  # outside after clipping
    ]
    s = load_coco_samples(_write(tmp_path, annotations=anns), tmp_path)
    assert [a for *_, a in s.samples] == [1] and s.skipped["empty"] == 2
    assert np.allclose(s.samples[0][1], [0, 70, 25, 80])


def test_dataset_decodes_each_image_once_and_crops_like_inference(coco128, monkeypatch):
    ann, image_dir, _ = _coco128(coco128)
    s = load_coco_samples(ann, image_dir)
    reads = []
    monkeypatch.setattr(coco_mod, "read_rgb", lambda p: reads.append(p) or read_rgb(p))
    ds = CropDataset(s, 40, context=0.2, mode="letterbox")
    # Three images, their boxes interleaved in the requested order.
    first = [np.flatnonzero(s.image_index == k)[:3] for k in (0, 1, 2)]
    indices = [int(i) for trio in zip(*first) for i in trio]
    x, y = ds.__getitems__(indices)
    assert len(reads) == 3 and x.shape == (len(indices), 3, 40, 40) and x.dtype == torch.float32
    assert y.dtype == torch.long and y.tolist() == [s.samples[i][2] for i in indices]
    # Not training: plain crops in [0, 1] (the inference form normalises them); training: normalised.
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for row, i in enumerate(indices):
        path, box, _, _ = s.samples[i]
        ref = extract_crops(torch.from_numpy(read_rgb(path)).permute(2, 0, 1), torch.from_numpy(box[None]), 40,
                            context=0.2, mode="letterbox")[0]
        assert torch.allclose(x[row], ref, atol=1e-5)
    xt, _ = CropDataset(s, 40, context=0.2, mode="letterbox", train=True).__getitems__(indices)
    assert torch.allclose(xt * std + mean, x, atol=1e-5)
    xi, yi = ds[indices[4]]
    assert torch.equal(xi, x[4]) and yi == y[4]


def test_jitter_mimics_detector_boxes():
    rng = np.random.default_rng(0)
    gt = np.stack([rng.uniform(0, 100, 500), rng.uniform(0, 100, 500)], 1)
    gt = np.concatenate([gt, gt + rng.uniform(2, 200, (500, 2))], 1).astype(np.float32)
    j = jitter_boxes(gt, 0.7, np.random.default_rng(1))
    iou = box_iou(j.astype(np.float64), gt.astype(np.float64))
    assert iou.min() >= 0.7 - 1e-6 and np.mean(iou < 0.99) > 0.9 and iou.mean() < 0.9
    assert np.array_equal(j, jitter_boxes(gt, 0.7, np.random.default_rng(1)))
    assert np.all(box_iou(jitter_boxes(gt, 0.9, rng).astype(np.float64), gt.astype(np.float64)) >= 0.9 - 1e-6)
    with pytest.raises(ValueError):
        jitter_boxes(gt, 1.5, rng)


def test_train_dataset_jitters_and_augments(coco128):
    ann, image_dir, _ = _coco128(coco128)
    s = load_coco_samples(ann, image_dir, min_size=24)
    idx = list(range(12))
    plain = CropDataset(s, 48).__getitems__(idx)[0]
    torch.manual_seed(0)
    jit = CropDataset(s, 48, train=True, jitter_iou=0.7).__getitems__(idx)[0]
    assert jit.shape == plain.shape and not torch.allclose(jit, plain)
    aug = CropDataset(s, 48, train=True, jitter_iou=0.7, transform=build_train_transform(48))
    x, y = aug.__getitems__(idx)
    assert x.shape == (12, 3, 48, 48) and torch.isfinite(x).all() and y.tolist() == s.labels[:12].tolist()
    # Not training: neither jitter nor augmentation, whatever was passed.
    ev = CropDataset(s, 48, train=False, jitter_iou=0.7, transform=build_train_transform(48))
    assert torch.equal(ev.__getitems__(idx)[0], plain)


def test_augmentation_repeats_under_the_same_torch_seed(coco128):
    """Whatever albumentations draws from (the global NumPy/random state in 1.x, a generator of the
    transform's own in 2.x, which the dataset seeds), the same torch seed gives the same augmented crops:
    what exact resume rests on."""
    ann, image_dir, _ = _coco128(coco128)
    s = load_coco_samples(ann, image_dir, min_size=24)
    idx = list(range(12))

    def crops(seed):
        import random

        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)
        ds = CropDataset(s, 48, train=True, jitter_iou=0.7, transform=build_train_transform(48))
        return ds.__getitems__(idx)[0]

    a, b, c = crops(1), crops(1), crops(2)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_loader_over_synthetic_scenes_covers_every_box_once(tmp_path):
    ann = generate_scenes(tmp_path, 3, seed=0, image_size=256)
    s = load_coco_samples(ann, ann.parent)
    assert s.class_names == list(SYNTHETIC_CLASSES) and len(s) > 0
    sampler = ImageGroupedBatchSampler(s, 5, shuffle=True, seed=0)
    sampler.set_epoch(1)
    loader = DataLoader(CropDataset(s, 32, train=True, jitter_iou=0.7), batch_sampler=sampler,
                        collate_fn=collate_identity)
    labels = torch.cat([y for _, y in loader])
    assert sorted(labels.tolist()) == sorted(s.labels.tolist())


# ------------------------------------------------------------------------------------------ sampler


def _fake_samples(sizes):
    return [(f"img{k}.jpg", np.zeros(4, np.float32), 0, 100 * k + j) for k, n in enumerate(sizes) for j in range(n)]


def _check_grouping(samples, batches):
    flat = [i for b in batches for i in b]
    paths = [samples[i][0] for i in flat]
    # Each image's boxes form one contiguous run of the epoch's order.
    runs = [p for k, p in enumerate(paths) if k == 0 or paths[k - 1] != p]
    assert len(runs) == len(set(runs))


def test_sampler_single_process_epoch():
    samples = _fake_samples([3, 1, 7, 2, 5, 4, 1])  # 23 boxes
    s = ImageGroupedBatchSampler(samples, 4, seed=3)
    s.set_epoch(0)
    e0 = list(s)
    assert len(e0) == len(s) == 6 and [len(b) for b in e0] == [4, 4, 4, 4, 4, 3]
    assert sorted(i for b in e0 for i in b) == list(range(23))
    _check_grouping(samples, e0)
    s.set_epoch(0)
    assert list(s) == e0
    s.set_epoch(1)
    assert list(s) != e0
    ordered = ImageGroupedBatchSampler(samples, 4, shuffle=False)
    assert [i for b in ordered for i in b] == list(range(23))
    dl = ImageGroupedBatchSampler(samples, 4, drop_last=True)
    assert len(dl) == 5 and all(len(b) == 4 for b in dl)


def test_sampler_without_grouping_mixes_images_and_keeps_its_guarantees():
    samples = _fake_samples([12, 12, 12, 12, 12, 12])  # 72 boxes, 6 images
    grouped = ImageGroupedBatchSampler(samples, 8, seed=4)
    mixed = ImageGroupedBatchSampler(samples, 8, seed=4, group_by_image=False)

    def images_per_batch(sampler):
        return np.mean([len({samples[i][0] for i in b}) for b in sampler])

    # Grouped: a batch of 8 spans 1-2 of the 12-box images; mixed: draws from most of the six.
    assert images_per_batch(grouped) <= 2 < 4 <= images_per_batch(mixed)
    mixed.set_epoch(3)
    e3 = list(mixed)
    assert sorted(i for b in e3 for i in b) == list(range(72)) and list(mixed) == e3
    mixed.set_epoch(4)
    assert list(mixed) != e3
    # Ranks still split each global batch of the single-process order.
    single = ImageGroupedBatchSampler(samples, 8, seed=4, group_by_image=False)
    ranks = [ImageGroupedBatchSampler(samples, 4, seed=4, group_by_image=False, num_replicas=2, rank=r) for r in (0, 1)]
    assert [a + b for a, b in zip(*map(list, ranks))] == list(single)


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_ranks_are_disjoint_equal_and_cover(drop_last):
    samples = _fake_samples([3, 1, 7, 2, 5, 4, 1, 6, 2])  # 31 boxes
    per_rank = []
    for r in range(3):
        s = ImageGroupedBatchSampler(samples, 4, seed=1, num_replicas=3, rank=r, drop_last=drop_last)
        s.set_epoch(2)
        per_rank.append(list(s))
        assert len(per_rank[-1]) == len(s)
        _check_grouping(samples, per_rank[-1])
    assert len({len(b) for b in per_rank}) == 1
    flat = [i for batches in per_rank for b in batches for i in b]
    assert len(flat) == len(set(flat))  # disjoint
    if drop_last:
        assert all(len(b) == 4 for batches in per_rank for b in batches)
    else:
        assert sorted(flat) == list(range(31))


@settings(max_examples=60, deadline=None, derandomize=True)
@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=12), batch=st.integers(1, 8), replicas=st.integers(1, 4),
       drop_last=st.booleans(), epoch=st.integers(0, 3))
def test_sampler_properties(sizes, batch, replicas, drop_last, epoch):
    samples = _fake_samples(sizes)
    if len(samples) < replicas:
        with pytest.raises(ValueError):
            ImageGroupedBatchSampler(samples, batch, num_replicas=replicas)
        return
    out = []
    for r in range(replicas):
        s = ImageGroupedBatchSampler(samples, batch, seed=7, num_replicas=replicas, rank=r, drop_last=drop_last)
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s) and all(1 <= len(b) <= batch for b in batches)
        out.append(batches)
    flat = [i for batches in out for b in batches for i in b]
    if drop_last:
        assert len(flat) == len(set(flat)) and all(len(b) == batch for bs in out for b in bs)
    elif all(sum(map(len, bs)) >= len(bs) for bs in out) and len(flat) == len(samples):
        assert sorted(flat) == list(range(len(samples)))
    else:
        assert set(flat) == set(range(len(samples)))  # degenerate share: every box, a few twice
