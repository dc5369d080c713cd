"""Synthetic detection scenes where resolution matters: the embedded default for the demo and tests.

Each scene is a cluttered, textured background (colour fields, lines, arcs, blobs, glyphs) with
3-15 objects of 16-160 px. An object is a coarse shape (circle, square, triangle) in a random
colour and rotation, carrying a centred mark whose texture makes its fine class (bars, checker,
dots, rings). Every mark is the same disk (half the object's size) half covered in ink, so the
classes share their coarse appearance and differ only in structure with a period of 1/15 of the
object's size (7.5 periods across the mark). The scene's blur (sigma 0.9 px), noise and JPEG wipe
that out below ~30 px (the fine class is genuinely ambiguous: every mark is the same grey disk),
it starts to show at 30-40 px and is plain from ~50 px (tests/test_synthetic.py measures this with
a template observer: chance at 16-24 px, 0.63 at 40 px, 0.8 from 48 px). A detector that sees the
scene at half resolution needs twice that size; a crop classifier reading the full-resolution pixels
does not. The coarse shape stays
visible at every size: a detector can be trained on the coarse classes (``supercategory``) or
the fine ones (``name``).

Wide-range scenes (``object_sizes``, ``mark_period_cap``; the resolution trade-off's ``synthetic_wide``):
objects of e.g. 10-320 px on 1024 px images. With the default period (1/15 of the object) every object
is the same picture at another scale, so a 250 px object shrunk to a 79 px crop keeps a readable mark
and a larger input could never help. ``mark_period_cap`` (px) makes the period ``min(size / 15, cap)``:
objects above ``15 * cap`` px carry marks finer than their size, in absolute pixels, like the text and
texture of real objects. A 4 px cap leaves every object up to 60 px unchanged; a 250 px object's marks then
have a period of 4 px, about 1 px once its crop is shrunk to 79 px (unreadable), 2 px at 151 and 4 px at 299.
The defaults (16-160 px, no cap) render exactly the scenes they always did.

Layout written by ``generate_scenes(out_dir, ...)``::

    out_dir/annotations.json      COCO instances (bbox, polygon segmentation, area, iscrowd=0)
    out_dir/images/000001.jpg     file_name entries are relative to out_dir

Deterministic: scene ``i`` of a split depends only on ``(seed, split_name, i, image_size)``, so the
same arguments give byte-identical images and JSON, and more images extend a set unchanged.
"""
from __future__ import annotations

import colorsys
import json
import math
import re
import zlib
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import cv2
import numpy as np

from ..utils.io import atomic_save_json

__all__ = [
    "ANNOTATION_FILE",
    "COARSE_CLASSES",
    "COARSE_OF",
    "IMAGE_DIR",
    "MARKS",
    "SYNTHETIC_CLASSES",
    "draw_object",
    "generate_scenes",
    "mark_period",
    "render_scene",
]

COARSE_CLASSES = ("circle", "square", "triangle")
MARKS = ("bars", "checker", "dots", "rings")
#: Fine class names, in category-id order (id = index + 1).
SYNTHETIC_CLASSES = tuple(f"{shape}_{mark}" for shape in COARSE_CLASSES for mark in MARKS)
#: Fine class name -> coarse class name (the COCO ``supercategory``).
COARSE_OF: Dict[str, str] = {f"{s}_{m}": s for s in COARSE_CLASSES for m in MARKS}

ANNOTATION_FILE = "annotations.json"
IMAGE_DIR = "images"
GENERATOR = "crop_classifier.data.synthetic"
# Bump whenever the rendering changes, so stale scene folders are regenerated, never silently reused
# (and models trained on other scenes are not reused by tools/demo.py).
# 2: the mark grew from a fifth to half of the object's size, at the same period (more of it to learn from),
#    and its texture has a random phase (its outline is no class cue).
VERSION = 2

MIN_OBJECT = 16
MAX_OBJECT = 160
MARK_RADIUS = 0.5  # of the object's half size (inside every shape: a triangle's incircle is 0.575)
MARK_PERIOD = 1 / 15  # of the object's size
JPEG_QUALITY = 92
BLUR_SIGMA = 0.9
NOISE_SIGMA = 4.0

_SHIFT = 4  # cv2 drawing with 1/16 px precision
_ONE = 1 << _SHIFT


def _fx(pts) -> np.ndarray:
    return np.round(np.asarray(pts, dtype=np.float64) * _ONE).astype(np.int32)


def _rot(points: np.ndarray, angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return points @ np.array([[c, s], [-s, c]])


def _fill_poly(img, pts, color) -> None:
    cv2.fillPoly(img, [_fx(pts).reshape(-1, 1, 2)], color, cv2.LINE_AA, _SHIFT)


def _disk(img, cx, cy, r, color) -> None:
    cv2.circle(img, tuple(_fx((cx, cy)).tolist()), int(round(r * _ONE)), color, -1, cv2.LINE_AA, _SHIFT)


def _shape_polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Outline ``[K, 2]`` of a coarse shape whose extent is about ``2r``."""
    if shape == "circle":
        t = np.linspace(0, 2 * math.pi, 24, endpoint=False)
        return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)
    if shape == "square":
        a = 0.82 * r
        pts = np.array([[-a, -a], [a, -a], [a, a], [-a, a]])
    elif shape == "triangle":
        # Equilateral; circumradius 1.15 r keeps its inscribed circle (0.575 r) around the mark.
        t = np.array([-math.pi / 2, math.pi / 6, 5 * math.pi / 6])
        pts = 1.15 * r * np.stack([np.cos(t), np.sin(t)], 1)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {COARSE_CLASSES}")
    return _rot(pts, angle) + (cx, cy)


def _mark_alpha(dx: np.ndarray, dy: np.ndarray, m: float, p: float, mark: str, phase=(0.0, 0.0)) -> np.ndarray:
    """Ink coverage of a mark of radius ``m`` and period ``p`` at offsets ``(dx, dy)`` (object frame).

    ``phase`` shifts the texture (in periods) under the fixed disk, so where the pattern meets the disk's
    edge varies from object to object and is no class cue: only the texture itself is.
    """
    w = 2 * math.pi / p
    tx, ty = dx + phase[0] * p, dy + phase[1] * p
    if mark == "bars":
        ink = np.cos(w * tx) > 0
    elif mark == "checker":
        ink = np.cos(w * tx) * np.cos(w * ty) > 0
    elif mark == "rings":
        ink = np.cos(w * np.hypot(dx, dy) + 2 * math.pi * phase[0]) > 0
    else:  # dots: a lattice of disks covering half the area, like the others
        ink = np.hypot(tx - p * np.round(tx / p), ty - p * np.round(ty / p)) < 0.4 * p
    return ink & (dx * dx + dy * dy <= m * m)


def _paint_mark(img: np.ndarray, cx: float, cy: float, m: float, p: float, mark: str, angle: float, ink,
                phase=(0.0, 0.0)) -> None:
    """Blends an anti-aliased (4x4 supersampled) mark into ``img`` (cv2's pixel-centre convention)."""
    H, W = img.shape[:2]
    x0, x1 = max(int(math.floor(cx - m)), 0), min(int(math.ceil(cx + m)) + 1, W)
    y0, y1 = max(int(math.floor(cy - m)), 0), min(int(math.ceil(cy + m)) + 1, H)
    if x0 >= x1 or y0 >= y1:
        return
    sub = (np.arange(4) + 0.5) / 4 - 0.5
    xs = (np.arange(x0, x1)[:, None] + sub[None]).reshape(-1) - cx
    ys = (np.arange(y0, y1)[:, None] + sub[None]).reshape(-1) - cy
    c, s = math.cos(angle), math.sin(angle)
    gx, gy = xs[None, :], ys[:, None]
    alpha = _mark_alpha(c * gx + s * gy, -s * gx + c * gy, m, p, mark, phase).astype(np.float32)
    alpha = alpha.reshape(y1 - y0, 4, x1 - x0, 4).mean(axis=(1, 3))[..., None]
    patch = img[y0:y1, x0:x1].astype(np.float32)
    img[y0:y1, x0:x1] = (patch * (1 - alpha) + np.array(ink, np.float32) * alpha + 0.5).astype(np.uint8)


def mark_period(size: float, cap: Optional[float] = None) -> float:
    """The mark's texture period (px) of an object of ``size`` px: ``MARK_PERIOD`` of its size, at most
    ``cap`` px when given (large objects then carry detail finer than their size)."""
    period = MARK_PERIOD * size
    return period if cap is None else min(period, float(cap))


def draw_object(img: np.ndarray, cx: float, cy: float, size: float, shape: str, mark: str, *,
                angle: float = 0.0, fill=(200, 60, 60), ink=(20, 20, 20), phase=(0.0, 0.0),
                period_cap: Optional[float] = None) -> np.ndarray:
    """Draws one object of about ``size`` px centred at ``(cx, cy)`` into ``img`` (HxWx3 uint8).

    The mark is a disk of ``MARK_RADIUS`` times the object's half size, half covered in ink in
    every class, so the classes differ only in fine structure (period ``MARK_PERIOD`` of the size,
    at most ``period_cap`` px: ``mark_period``); ``phase`` (two fractions of a period) shifts the
    texture under the disk. Returns the object's outline polygon ``[K, 2]`` (its bounding box is the
    object's box).
    """
    if mark not in MARKS:
        raise ValueError(f"unknown mark {mark!r}; valid: {MARKS}")
    r = size / 2
    poly = _shape_polygon(shape, cx, cy, r, angle)
    fill, ink = tuple(int(c) for c in fill), tuple(int(c) for c in ink)
    if shape == "circle":
        _disk(img, cx, cy, r, fill)
    else:
        _fill_poly(img, poly, fill)
    _paint_mark(img, cx, cy, MARK_RADIUS * r, mark_period(size, period_cap), mark, angle, ink, phase)
    return poly


def _colour(rng: np.random.Generator, v_lo: float, v_hi: float, s_lo: float = 0.3) -> Tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(s_lo, 1.0), rng.uniform(v_lo, v_hi))
    return int(255 * b), int(255 * g), int(255 * r)  # BGR, the order cv2 writes


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    # Low-frequency colour field plus mid-frequency texture.
    field = cv2.resize(rng.integers(30, 226, (4, 4, 3)).astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    k = max(size // 12, 4)
    tex = cv2.resize(rng.standard_normal((k, k, 1), dtype=np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    img = np.clip(field + 28 * tex[..., None], 0, 255).astype(np.uint8)
    # Clutter: strokes, arcs, irregular blobs and glyphs that a detector must learn to ignore.
    for _ in range(int(rng.integers(15, 40))):
        kind = rng.integers(5)
        col = _colour(rng, 0.1, 1.0, 0.0)
        p = rng.uniform(0, size, 2)
        if kind == 0:
            q = p + rng.normal(0, size / 5, 2)
            cv2.line(img, tuple(_fx(p).tolist()), tuple(_fx(q).tolist()), col, int(rng.integers(1, 4)), cv2.LINE_AA, _SHIFT)
        elif kind == 1:
            pts = p + np.cumsum(rng.normal(0, size / 12, (int(rng.integers(3, 7)), 2)), 0)
            cv2.polylines(img, [_fx(pts).reshape(-1, 1, 2)], False, col, int(rng.integers(1, 3)), cv2.LINE_AA, _SHIFT)
        elif kind == 2:
            ax = tuple(int(a) for a in rng.uniform(6, size / 6, 2))
            a0 = float(rng.uniform(0, 360))
            cv2.ellipse(img, tuple(int(c) for c in p), ax, float(rng.uniform(0, 180)), a0, a0 + float(rng.uniform(60, 300)),
                        col, int(rng.integers(1, 4)), cv2.LINE_AA)
        elif kind == 3:
            n = int(rng.integers(6, 11))
            t = np.sort(rng.uniform(0, 2 * math.pi, n))
            rad = rng.uniform(4, size / 14) * rng.uniform(0.4, 1.0, n)
            _fill_poly(img, p + np.stack([rad * np.cos(t), rad * np.sin(t)], 1), col)
        else:
            glyph = chr(int(rng.integers(33, 127)))
            cv2.putText(img, glyph, tuple(int(c) for c in p), int(rng.integers(0, 8)), float(rng.uniform(0.3, 1.3)), col,
                        int(rng.integers(1, 3)), cv2.LINE_AA)
    return img


def _place(rng: np.random.Generator, size: int, obj: float, boxes: List[np.ndarray]):
    """A centre for an object of extent ``obj`` (its worst-case box) clear of the others, or None."""
    half = obj * 0.6
    for _ in range(30):
        c = rng.uniform(half + 1, size - half - 1, 2)
        box = np.array([c[0] - half, c[1] - half, c[0] + half, c[1] + half])
        if all(box[0] > b[2] + 2 or box[2] < b[0] - 2 or box[1] > b[3] + 2 or box[3] < b[1] - 2 for b in boxes):
            return c, box
    return None


def _check_sizes(object_sizes: Sequence[float], mark_period_cap: Optional[float]) -> Tuple[float, float]:
    lo, hi = (float(v) for v in object_sizes)
    if not (math.isfinite(lo) and math.isfinite(hi) and 4 <= lo <= hi):
        raise ValueError(f"object_sizes must be (min, max) px with 4 <= min <= max, got {tuple(object_sizes)}")
    if mark_period_cap is not None and not (math.isfinite(mark_period_cap) and mark_period_cap >= 1):
        raise ValueError(f"mark_period_cap must be a period in px >= 1 (or None), got {mark_period_cap!r}")
    return lo, hi


def render_scene(rng: np.random.Generator, image_size: int = 512, *,
                 object_sizes: Tuple[float, float] = (MIN_OBJECT, MAX_OBJECT),
                 mark_period_cap: Optional[float] = None) -> Tuple[np.ndarray, List[Dict[str, object]]]:
    """One scene: a BGR uint8 image and its objects (``bbox`` XYWH, ``polygon``, ``area``, ``category``).

    Object sizes are log-uniform in ``object_sizes`` (px; at most 0.3 of the image); ``mark_period_cap``:
    see ``mark_period`` and the module doc (None: the period scales with the object, as by default)."""
    min_obj, max_obj = _check_sizes(object_sizes, mark_period_cap)
    img = _background(rng, image_size)
    max_obj = min(max_obj, image_size * 0.3)
    objects: List[Dict[str, object]] = []
    taken: List[np.ndarray] = []
    for _ in range(int(rng.integers(3, 16))):
        size = float(np.exp(rng.uniform(math.log(min_obj), math.log(max_obj))))
        cls = int(rng.integers(len(SYNTHETIC_CLASSES)))
        shape, mark = SYNTHETIC_CLASSES[cls].split("_")
        angle = float(rng.uniform(0, 2 * math.pi))
        phase = tuple(float(v) for v in rng.uniform(0, 1, 2))
        fill = _colour(rng, 0.35, 0.95)
        # The mark contrasts with the fill in brightness, in any hue.
        v = max(fill) / 255
        ink = _colour(rng, 0.0, 0.2, 0.0) if v > 0.6 else _colour(rng, min(v + 0.45, 0.95), 1.0, 0.0)
        # Squares and triangles reach past 2r: reserve their worst-case extent.
        spot = _place(rng, image_size, size * (1.25 if shape != "circle" else 1.0), taken)
        if spot is None:
            continue
        (cx, cy), reserved = spot
        taken.append(reserved)
        poly = draw_object(img, cx, cy, size, shape, mark, angle=angle, fill=fill, ink=ink, phase=phase,
                           period_cap=mark_period_cap)
        x1, y1 = np.maximum(poly.min(0), 0)
        x2, y2 = np.minimum(poly.max(0), image_size)
        objects.append({
            "category": SYNTHETIC_CLASSES[cls],
            "bbox": [round(float(x1), 2), round(float(y1), 2), round(float(x2 - x1), 2), round(float(y2 - y1), 2)],
            "polygon": [round(float(v), 2) for v in poly.reshape(-1)],
            "area": round(float(cv2.contourArea(poly.astype(np.float32))), 2),
        })
    # Camera-like degradation: slight blur and sensor noise (JPEG adds its own loss).
    img = cv2.GaussianBlur(img, (0, 0), BLUR_SIGMA)
    noisy = img.astype(np.float32) + rng.standard_normal(img.shape, dtype=np.float32) * NOISE_SIGMA
    return np.clip(noisy + 0.5, 0, 255).astype(np.uint8), objects


def _scene_rng(seed: int, split_name: str, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(split_name.encode()), int(index)])


def _existing(ann: Path, params: Dict[str, object]) -> bool:
    """True when ``ann`` holds exactly these scenes with all their images; error if it is not ours."""
    try:
        data = json.loads(ann.read_text())
    except (OSError, ValueError):
        return False
    info = data.get("info", {}) if isinstance(data, dict) else {}
    if info.get("generator") != GENERATOR:
        raise FileExistsError(f"{ann} exists and was not written by {GENERATOR}; refusing to overwrite it")
    keys = set(params) | {"object_sizes", "mark_period_cap"}  # absent = the defaults
    if {k: info.get(k) for k in keys} != {k: params.get(k) for k in keys}:
        return False
    return all((ann.parent / im["file_name"]).is_file() for im in data.get("images", []))


def generate_scenes(out_dir: Union[str, Path], num_images: int, *, seed: int = 0, image_size: int = 512,
                    split_name: str = "train", object_sizes: Tuple[float, float] = (MIN_OBJECT, MAX_OBJECT),
                    mark_period_cap: Optional[float] = None) -> Path:
    """Writes ``num_images`` scenes and their COCO JSON into ``out_dir``; returns the JSON's path.

    ``object_sizes`` and ``mark_period_cap``: see ``render_scene``; other values than the defaults are
    recorded in the JSON's ``info`` (the defaults' JSON is unchanged).

    Does nothing when ``out_dir`` already holds exactly these scenes (same count, seed, size,
    split and renderer version); regenerates a folder of other synthetic scenes; refuses to
    overwrite an ``annotations.json`` written by anything else. The JSON is written last and
    atomically, so an interrupted run leaves no half-valid dataset behind.
    """
    if int(num_images) < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    if int(image_size) < 64:
        raise ValueError(f"image_size must be >= 64, got {image_size}")
    out = Path(out_dir)
    ann = out / ANNOTATION_FILE
    sizes = _check_sizes(object_sizes, mark_period_cap)
    params = {"version": VERSION, "seed": int(seed), "num_images": int(num_images), "image_size": int(image_size),
              "split": str(split_name)}
    if sizes != (MIN_OBJECT, MAX_OBJECT) or mark_period_cap is not None:
        params.update(object_sizes=list(sizes), mark_period_cap=mark_period_cap)
    if ann.is_file() and _existing(ann, params):
        return ann
    (out / IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(int(num_images)):
        img, objects = render_scene(_scene_rng(seed, split_name, i), int(image_size), object_sizes=sizes,
                                    mark_period_cap=mark_period_cap)
        name = f"{IMAGE_DIR}/{i + 1:06d}.jpg"
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {out / name}")
        (out / name).write_bytes(buf.tobytes())
        images.append({"id": i + 1, "file_name": name, "width": int(image_size), "height": int(image_size)})
        for o in objects:
            annotations.append({
                "id": len(annotations) + 1, "image_id": i + 1,
                "category_id": SYNTHETIC_CLASSES.index(o["category"]) + 1,
                "bbox": o["bbox"], "area": o["area"], "iscrowd": 0, "segmentation": [o["polygon"]],
            })
    # Images of an earlier, larger set in this folder would otherwise linger.
    keep = {Path(im["file_name"]).name for im in images}
    for stale in (out / IMAGE_DIR).iterdir():
        if re.fullmatch(r"\d{6}\.jpg", stale.name) and stale.name not in keep:
            stale.unlink()
    data = {
        "info": {"description": "crop_classifier synthetic scenes", "generator": GENERATOR, **params},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": n, "supercategory": COARSE_OF[n]} for k, n in enumerate(SYNTHETIC_CLASSES)],
    }
    atomic_save_json(ann, data, indent=None, separators=(",", ":"))
    return ann


def class_names(coarse: bool = False) -> Sequence[str]:
    """The fine class names in id order, or the coarse ones."""
    return COARSE_CLASSES if coarse else SYNTHETIC_CLASSES
