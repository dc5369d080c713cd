"""Synthetic scenes: determinism, COCO validity, idempotent generation, and fine classes that need resolution."""
import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from crop_classifier.data import synthetic
from crop_classifier.data.synthetic import (
    ANNOTATION_FILE,
    COARSE_CLASSES,
    COARSE_OF,
    MARKS,
    SYNTHETIC_CLASSES,
    draw_object,
    generate_scenes,
)
from tool_loader import load_tool


def files(d: Path):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_scenes(tmp_path):
    a = generate_scenes(tmp_path / "a", 3, seed=5, image_size=256)
    b = generate_scenes(tmp_path / "b", 3, seed=5, image_size=256)
    c = generate_scenes(tmp_path / "c", 3, seed=6, image_size=256)
    assert a == tmp_path / "a" / ANNOTATION_FILE
    fa, fb, fc = files(a.parent), files(b.parent), files(c.parent)
    assert fa == fb and len(fa) == 4
    assert all(fa[k] != fc[k] for k in fa)
    # Another split name is another random stream; more images extend a set without changing it.
    d = generate_scenes(tmp_path / "d", 4, seed=5, image_size=256, split_name="val")
    assert files(d.parent)["images/000001.jpg"] != fa["images/000001.jpg"]
    e = generate_scenes(tmp_path / "e", 4, seed=5, image_size=256)
    fe = files(e.parent)
    assert all(fe[f"images/00000{i}.jpg"] == fa[f"images/00000{i}.jpg"] for i in (1, 2, 3))


def test_coco_json_is_valid_and_matches_the_images(tmp_path):
    from pycocotools.coco import COCO

    ann = generate_scenes(tmp_path, 6, seed=0)
    data = json.loads(ann.read_text())
    assert [c["name"] for c in data["categories"]] == list(SYNTHETIC_CLASSES)
    assert [c["id"] for c in data["categories"]] == list(range(1, len(SYNTHETIC_CLASSES) + 1))
    assert all(c["supercategory"] == COARSE_OF[c["name"]] for c in data["categories"])
    assert set(COARSE_OF.values()) == set(COARSE_CLASSES) and len(SYNTHETIC_CLASSES) == len(COARSE_CLASSES) * len(MARKS)
    coco = COCO(str(ann))
    per_image = {im["id"]: 0 for im in data["images"]}
    for a in data["annotations"]:
        x, y, w, h = a["bbox"]
        assert 0 <= x and 0 <= y and x + w <= 512 and y + h <= 512
        assert 12 <= max(w, h) <= 1.3 * synthetic.MAX_OBJECT
        assert a["iscrowd"] == 0 and 0 < a["area"] <= w * h + 1
        poly = np.array(a["segmentation"][0]).reshape(-1, 2)
        assert np.allclose(poly.min(0), [x, y], atol=0.02) and np.allclose(poly.max(0), [x + w, y + h], atol=0.02)
        per_image[a["image_id"]] += 1
    assert all(1 <= n <= 15 for n in per_image.values()) and np.mean(list(per_image.values())) >= 3
    for im in data["images"]:
        pixels = cv2.imread(str(ann.parent / im["file_name"]))
        assert pixels.shape == (im["height"], im["width"], 3) == (512, 512, 3)
    # Objects never overlap, so every mark is whole.
    for img_id in per_image:
        boxes = [coco.anns[i]["bbox"] for i in coco.getAnnIds(imgIds=[img_id])]
        for i, (x1, y1, w1, h1) in enumerate(boxes):
            for x2, y2, w2, h2 in boxes[i + 1:]:
                assert x1 + w1 <= x2 or x2 + w2 <= x1 or y1 + h1 <= y2 or y2 + h2 <= y1


def test_generation_is_idempotent_and_refreshes_other_scenes(tmp_path):
    ann = generate_scenes(tmp_path, 3, seed=1, image_size=128)
    stamp = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.j*")}
    assert generate_scenes(tmp_path, 3, seed=1, image_size=128) == ann
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.j*")} == stamp  # untouched
    generate_scenes(tmp_path, 2, seed=2, image_size=128)  # other scenes: regenerated, stale image removed
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == ["000001.jpg", "000002.jpg"]
    assert json.loads(ann.read_text())["info"]["seed"] == 2
    (tmp_path / "images" / "000002.jpg").unlink()  # incomplete: regenerated
    generate_scenes(tmp_path, 2, seed=2, image_size=128)
    assert (tmp_path / "images" / "000002.jpg").is_file()


def test_refuses_to_overwrite_foreign_annotations(tmp_path):
    (tmp_path / ANNOTATION_FILE).write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(FileExistsError, match="not written by"):
        generate_scenes(tmp_path, 1)
    with pytest.raises(ValueError, match="num_images"):
        generate_scenes(tmp_path / "x", 0)


def _observe(size, mark, angle, phase, fill, ink, offset, rng):
    """An object as the scenes show it (blur, noise, JPEG), its mark region cut out and normalised."""
    canvas = np.full((160, 160, 3), 120, np.uint8)
    draw_object(canvas, 80 + offset[0], 80 + offset[1], size, "circle", mark, angle=angle, fill=fill, ink=ink,
                phase=phase)
    img = cv2.GaussianBlur(canvas, (0, 0), synthetic.BLUR_SIGMA).astype(np.float32)
    if rng is not None:
        img = np.clip(img + rng.normal(0, synthetic.NOISE_SIGMA, img.shape), 0, 255).astype(np.uint8)
        img = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, synthetic.JPEG_QUALITY])[1], 1)
    h = size * 0.3
    region = img[int(80 - h):int(80 + h) + 1, int(80 - h):int(80 + h) + 1].astype(np.float32).mean(2)
    region = cv2.resize(region, (24, 24), interpolation=cv2.INTER_AREA)
    return (region - region.mean()) / (region.std() + 1e-3)


def _template_accuracy(size, trials=32, seed=0):
    """Nearest-template fine-class accuracy with the angle and phase unknown (templates at 12 angles x 9
    phases): an ideal observer's view of how visible the marks are at this object size. Chance is 1/4."""
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, math.pi / 2, 12, endpoint=False)
    phases = [(a, b) for a in (0, 1 / 3, 2 / 3) for b in (0, 1 / 3, 2 / 3)]
    templates = [[_observe(size, m, a, ph, (60, 160, 220), (30, 30, 30), (0, 0), None) for a in angles for ph in phases]
                 for m in MARKS]
    hits = 0
    for t in range(trials):
        k = t % len(MARKS)
        fill = tuple(int(v) for v in rng.uniform(150, 240, 3))
        ink = tuple(int(v) for v in rng.uniform(0, 50, 3))
        seen = _observe(size, MARKS[k], rng.uniform(0, 2 * math.pi), rng.uniform(0, 1, 2), fill, ink,
                        rng.uniform(-0.5, 0.5, 2), rng)
        dist = [min(np.abs(seen - tp).mean() for tp in per_mark) for per_mark in templates]
        hits += int(np.argmin(dist) == k)
    return hits / trials


def test_fine_classes_need_resolution():
    small, large = _template_accuracy(16), _template_accuracy(72)
    assert small <= 0.45, small  # about chance: every mark is the same grey disk
    assert large >= 0.75, large


def test_make_synthetic_tool(tmp_path, capsys):
    tool = load_tool("make_synthetic")
    assert tool.main(["--output", str(tmp_path), "--num-images", "2", "--seed", "3", "--size", "128"]) == 0
    assert "2 images" in capsys.readouterr().out
    assert files(tmp_path) == files(generate_scenes(tmp_path / "again", 2, seed=3, image_size=128).parent)
    assert tool.main(["--output", str(tmp_path / "bad"), "--num-images", "0"]) == 2


def test_mark_period_cap_changes_large_objects_only(tmp_path):
    from crop_classifier.data.synthetic import mark_period, render_scene

    assert mark_period(30) == mark_period(30, cap=4.0) == 2.0 and mark_period(300, cap=4.0) == 4.0

    def drawn(size, cap):
        img = np.full((360, 360, 3), 120, np.uint8)
        draw_object(img, 180, 180, size, "square", "bars", angle=0.3, period_cap=cap)
        return img

    assert np.array_equal(drawn(45, None), drawn(45, 4.0))  # 45 / 15 = 3 px < the cap: the same object
    big, capped = drawn(300, None), drawn(300, 4.0)
    assert not np.array_equal(big, capped)
    # Capped marks are finer: more ink/fill transitions along a line through the mark.
    row = lambda im: np.count_nonzero(np.abs(np.diff(im[180, 120:240, 0].astype(int))) > 40)
    assert row(capped) > 2 * row(big)
    # The defaults are the scenes they always were (explicitly passed or not), recorded as before.
    a = render_scene(np.random.default_rng(3), 256)
    b = render_scene(np.random.default_rng(3), 256, object_sizes=(synthetic.MIN_OBJECT, synthetic.MAX_OBJECT))
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    info = json.loads(generate_scenes(tmp_path / "d", 1, image_size=128).read_text())["info"]
    assert "object_sizes" not in info and "mark_period_cap" not in info
    # Wide scenes: sizes within the range, recorded, and a default request regenerates them.
    ann = generate_scenes(tmp_path / "w", 2, image_size=640, object_sizes=(10, 190), mark_period_cap=4)
    data = json.loads(ann.read_text())
    assert data["info"]["object_sizes"] == [10.0, 190.0] and data["info"]["mark_period_cap"] == 4
    assert all(max(a["bbox"][2:]) <= 1.2 * 190 for a in data["annotations"])
    generate_scenes(tmp_path / "w", 2, image_size=640)
    assert "object_sizes" not in json.loads(ann.read_text())["info"]
    with pytest.raises(ValueError, match="object_sizes"):
        generate_scenes(tmp_path / "x", 1, object_sizes=(50, 20))
    with pytest.raises(ValueError, match="mark_period_cap"):
        generate_scenes(tmp_path / "x", 1, mark_period_cap=0)
