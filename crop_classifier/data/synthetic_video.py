"""Synthetic moving scenes: the objects of ``synthetic.py`` moving over a static textured background.

Objects move along straight paths with a slow turn, enter and leave the frame, pass in front of each other
(drawn far to near: a larger, closer object hides a smaller one) and grow or shrink as they approach or
recede (size changes geometrically between a start and an end size). Each object keeps its fine class,
colour, mark phase and identity for its whole life; its rotation drifts slowly. Every frame gets the
still scenes' camera degradation (blur, sensor noise), so a small object's mark is as ambiguous here as there:
an object coming closer gives the classifier a better view.

Ground truth per frame: ``objects`` with ``id`` (identity, stable across frames), ``category`` (fine class),
``bbox`` (XYXY, clipped to the frame), ``size`` (the object's nominal size in px) and ``visible`` (the
fraction of its pixels not hidden by nearer objects or the frame edge).

Deterministic: video ``i`` depends only on ``(seed, i, options)``; frame ``t`` of a video is the same
whatever frames are rendered before it.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Tuple, Union

import cv2
import numpy as np

from ..utils.io import atomic_save_json
from .synthetic import BLUR_SIGMA, NOISE_SIGMA, SYNTHETIC_CLASSES, _background, _colour, _shape_polygon, draw_object

__all__ = ["MovingSceneOptions", "MovingObject", "MovingScene", "write_video"]


@dataclass(frozen=True)
class MovingSceneOptions:
    image_size: int = 512
    num_frames: int = 120
    num_objects: int = 8  # over the whole video; they enter at random times
    min_size: float = 14.0
    max_size: float = 140.0
    max_speed: float = 4.0  # px per frame
    fps: float = 25.0


@dataclass
class MovingObject:
    """One object's life: it exists for frames ``start <= t < end``."""

    id: int
    category: str
    start: int
    end: int
    pos0: Tuple[float, float]
    velocity: Tuple[float, float]
    turn: float  # rad per frame of the velocity
    size0: float
    size1: float
    angle0: float
    spin: float
    fill: Tuple[int, int, int]
    ink: Tuple[int, int, int]
    phase: Tuple[float, float]

    def state(self, t: int) -> Tuple[float, float, float, float]:
        """(cx, cy, size, angle) at frame ``t``."""
        k = t - self.start
        life = max(self.end - self.start - 1, 1)
        if abs(self.turn) < 1e-9:
            dx, dy = self.velocity[0] * k, self.velocity[1] * k
        else:  # a constant-speed circular arc: the velocity rotates by ``turn`` per frame
            vx, vy = self.velocity
            s, c = math.sin(self.turn * k), math.cos(self.turn * k)
            dx = (vx * s - vy * (1 - c)) / self.turn
            dy = (vy * s + vx * (1 - c)) / self.turn
        size = self.size0 * (self.size1 / self.size0) ** (k / life)
        return self.pos0[0] + dx, self.pos0[1] + dy, size, self.angle0 + self.spin * k


def _video_rng(seed: int, index: int, salt: str) -> np.random.Generator:
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(salt.encode()), int(index)])


def _make_object(rng: np.random.Generator, oid: int, o: MovingSceneOptions) -> MovingObject:
    n = o.num_frames
    S = o.image_size
    cls = SYNTHETIC_CLASSES[int(rng.integers(len(SYNTHETIC_CLASSES)))]
    # Half the objects approach (grow), a third recede, the rest keep their size.
    lo, hi = math.log(o.min_size), math.log(o.max_size)
    a, b = sorted(float(v) for v in rng.uniform(lo, hi, 2))
    kind = rng.uniform()
    size0, size1 = (math.exp(a), math.exp(b)) if kind < 0.5 else (math.exp(b), math.exp(a)) if kind < 0.83 else \
        (math.exp(a), math.exp(a))
    start = 0 if rng.uniform() < 0.4 else int(rng.integers(0, max(n // 2, 1)))
    end = min(n, start + int(rng.integers(max(n // 3, 2), n + 1)))
    speed = float(rng.uniform(0.3, 1.0)) * o.max_speed
    heading = float(rng.uniform(0, 2 * math.pi))
    if rng.uniform() < 0.3:  # enters from outside: start beyond an edge, heading inwards
        edge_angle = heading + math.pi
        pos0 = (S / 2 + math.cos(edge_angle) * S * 0.6, S / 2 + math.sin(edge_angle) * S * 0.6)
    else:
        pos0 = tuple(float(v) for v in rng.uniform(0.1 * S, 0.9 * S, 2))
    fill = _colour(rng, 0.35, 0.95)
    v = max(fill) / 255
    ink = _colour(rng, 0.0, 0.2, 0.0) if v > 0.6 else _colour(rng, min(v + 0.45, 0.95), 1.0, 0.0)
    return MovingObject(
        id=oid, category=cls, start=start, end=max(end, start + 2), pos0=pos0,
        velocity=(speed * math.cos(heading), speed * math.sin(heading)), turn=float(rng.normal(0, 0.01)),
        size0=size0, size1=size1, angle0=float(rng.uniform(0, 2 * math.pi)), spin=float(rng.normal(0, 0.01)),
        fill=fill, ink=ink, phase=tuple(float(p) for p in rng.uniform(0, 1, 2)),
    )


class MovingScene:
    """Video ``index`` of a set: ``frame(t) -> (RGB uint8 image, ground-truth objects)``; iterate for all."""

    def __init__(self, index: int = 0, *, seed: int = 0, options: MovingSceneOptions = MovingSceneOptions()):
        if options.image_size < 64 or options.num_frames < 1 or options.num_objects < 0:
            raise ValueError(f"moving scene options out of range: {options}")
        self.index, self.seed, self.options = int(index), int(seed), options
        rng = _video_rng(seed, index, "moving-scene")
        self.background = _background(rng, options.image_size)  # BGR, as synthetic.py draws
        self.objects = [_make_object(rng, i + 1, options) for i in range(options.num_objects)]

    def __len__(self) -> int:
        return self.options.num_frames

    def _alive(self, t: int):
        if not 0 <= t < self.options.num_frames:
            raise IndexError(f"frame {t} outside 0..{self.options.num_frames - 1}")
        alive = [(o, o.state(t)) for o in self.objects if o.start <= t < o.end]
        alive.sort(key=lambda x: x[1][2])  # far (small) first: nearer objects hide farther ones
        return alive

    def objects_at(self, t: int) -> List[Dict[str, object]]:
        """Ground truth of frame ``t`` (see module doc), without rendering the frame."""
        S = self.options.image_size
        owner = np.zeros((S, S), np.int32)  # which object each pixel shows, for visibility
        polys = []
        for o, (cx, cy, size, angle) in self._alive(t):
            poly = _shape_polygon(o.category.split("_")[0], cx, cy, size / 2, angle)
            cv2.fillPoly(owner, [np.round(poly).astype(np.int32).reshape(-1, 1, 2)], int(o.id))
            polys.append((o, size, poly))
        counts = np.bincount(owner.ravel(), minlength=len(self.objects) + 1)
        gt = []
        for o, size, poly in polys:
            x1, y1 = np.maximum(poly.min(0), 0)
            x2, y2 = np.minimum(poly.max(0), S)
            if x2 - x1 < 1 or y2 - y1 < 1:
                continue  # entirely outside the frame
            area = max(float(cv2.contourArea(poly.astype(np.float32))), 1.0)
            gt.append({"id": o.id, "category": o.category, "size": round(size, 2),
                       "bbox": [round(float(v), 2) for v in (x1, y1, x2, y2)],
                       "visible": round(min(float(counts[o.id]) / area, 1.0), 3)})
        return gt

    def frame(self, t: int) -> Tuple[np.ndarray, List[Dict[str, object]]]:
        """(RGB uint8 image, ground-truth objects) of frame ``t``."""
        img = self.background.copy()
        for o, (cx, cy, size, angle) in self._alive(t):
            shape, mark = o.category.split("_")
            draw_object(img, cx, cy, size, shape, mark, angle=angle, fill=o.fill, ink=o.ink, phase=o.phase)
        rng = _video_rng(self.seed, self.index * 100003 + t, "moving-noise")
        img = cv2.GaussianBlur(img, (0, 0), BLUR_SIGMA)
        noisy = img.astype(np.float32) + rng.standard_normal(img.shape, dtype=np.float32) * NOISE_SIGMA
        bgr = np.clip(noisy + 0.5, 0, 255).astype(np.uint8)
        return np.ascontiguousarray(bgr[:, :, ::-1]), self.objects_at(t)

    def __iter__(self) -> Iterator[Tuple[np.ndarray, List[Dict[str, object]]]]:
        for t in range(len(self)):
            yield self.frame(t)

    def ground_truth(self) -> Dict[str, object]:
        return {"generator": __name__, "seed": self.seed, "index": self.index, "options": asdict(self.options),
                "frames": [self.objects_at(t) for t in range(len(self))]}


def write_video(scene: MovingScene, path: Union[str, Path]) -> Path:
    """Writes the frames as an mp4 (``mp4v``) and the ground truth beside it (``PATH.gt.json``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    S = scene.options.image_size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), scene.options.fps, (S, S))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write video {path} (OpenCV has no mp4v encoder?)")
    frames = []
    try:
        for rgb, gt in scene:
            writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
            frames.append(gt)
    finally:
        writer.release()
    atomic_save_json(path.with_suffix(path.suffix + ".gt.json"),
                     {"generator": __name__, "seed": scene.seed, "index": scene.index,
                      "options": asdict(scene.options), "frames": frames})
    return path
