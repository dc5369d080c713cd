"""Video: track policy vs classifying every box of every frame, on synthetic moving scenes with the demo models.

Models: demo_weights/ (the demo's float16 Detectron2 detector on the 12 fine classes, seeing 512 px scenes at
256 px, and its v3_79 width-0.25 crop classifier). The second stage runs ``replace`` fusion within each
detector box's shape (``circle_* -> circle_*``, ...): the detector finds the shapes well and misses the marks,
which the classifier decides.

Per video (``crop_classifier.data.synthetic_video.MovingScene``; frames rendered before any timing):

1. detector alone, timed;
2. the track loop with the re-inference policy (``crop_classifier.video``), detector included, timed;
3. the same detections and tracks with every box classified in every frame (the baseline), timed
   (its detector time is step 1's).

Accuracy is that of the label shown on each frame for ground-truth objects (visible >= ``min_visible``) that a
shown box matches (IoU >= 0.5, one-to-one): ``detector`` (the detector's class), ``per_frame`` (this frame's
own classification, every box every frame), ``track_last`` / ``track_mean`` / ``track_weighted`` (the track
vote over the policy's views; module ``crop_classifier.video.temporal``), ``all_views_weighted`` (the vote
over every frame's view), ``track_weighted_area`` (weights squared: the area a view fills), ``track_geometric``
(weighted geometric mean), and
``track_final`` (offline, with hindsight: every frame labelled with its track's final weighted vote), per size
bucket of the object's nominal size. Class-aware IDF1 per variant (a match
needs IoU >= 0.5 and the right fine class) comes from ``motmetrics`` when installed; HOTA is not computed
(motmetrics has none and TrackEval is not a kept dependency here).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from crop_classifier.data import synthetic
from crop_classifier.data.synthetic import COARSE_OF
from crop_classifier.data.synthetic_video import MovingScene, MovingSceneOptions
from crop_classifier.detectors import build_first_stage
from crop_classifier.deploy import load_classifier
from crop_classifier.second_stage import SecondStage, fuse
from crop_classifier.video import Frame, ReinferOptions, TrackerOptions, TrackingLoop, TrackOptions

#: The demo detector's config, relative to the repository's configs/ folder.
DEMO_DETECTOR_CONFIG = "d2/demo_synthetic_R18_FPN.yaml"
SIZE_BUCKETS = ((0, 32, "<32"), (32, 64, "32-64"), (64, 1e9, ">=64"))
VARIANTS = ("detector", "per_frame", "track_last", "track_mean", "track_weighted", "track_weighted_area",
            "track_geometric", "all_views_weighted", "track_final")
ONLINE = VARIANTS[:-1]  # track_final labels every frame with the track's final vote: hindsight, offline only


def shape_class_map(classes: Sequence[str]) -> Dict[str, List[str]]:
    """Each fine class maps to every fine class of its shape (``circle_bars -> circle_*``)."""
    return {c: [k for k in classes if COARSE_OF[k] == COARSE_OF[c]] for c in classes}


def load_demo_models(device: str, weights_dir: os.PathLike, detector_config: os.PathLike,
                     score_thresh: float = 0.05):
    """The shipped demo models as (first stage, second stage).

    Args:
        device: torch device of both stages.
        weights_dir: the demo models' folder (``manifest.json``, ``detector.pth``, ``classifier.pth``).
        detector_config: the detector's Detectron2 config (``configs/`` + ``DEMO_DETECTOR_CONFIG``).
        score_thresh: the detector's score threshold.

    Returns:
        ``(FirstStage, SecondStage)``; the second stage maps each class to the classes of its shape.
    """
    weights_dir = Path(weights_dir)
    manifest = json.loads((weights_dir / "manifest.json").read_text())
    if manifest.get("synthetic_version") != synthetic.VERSION:
        raise RuntimeError(f"{weights_dir} was made for synthetic scenes version {manifest.get('synthetic_version')}, "
                           f"these are version {synthetic.VERSION}")
    first = build_first_stage("faster_rcnn", config_file=str(detector_config), weights=str(weights_dir / "detector.pth"),
                              device=device, score_thresh=score_thresh)
    second = SecondStage(load_classifier(weights_dir / "classifier.pth", "torch", device=device), first.class_names,
                         class_map=shape_class_map(first.class_names), fusion="replace")
    return first, second


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    from torchvision.ops import box_iou

    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    return box_iou(torch.as_tensor(a, dtype=torch.float32), torch.as_tensor(b, dtype=torch.float32)).numpy()


def _match(gt_boxes: np.ndarray, boxes: np.ndarray, thresh: float = 0.5):
    """One-to-one (Hungarian) matches ``[(gt index, box index)]`` with IoU >= thresh."""
    from scipy.optimize import linear_sum_assignment

    iou = _iou(gt_boxes, boxes)
    if not iou.size:
        return [], iou
    r, c = linear_sum_assignment(-iou)
    return [(i, j) for i, j in zip(r, c) if iou[i, j] >= thresh], iou


def _labels(loop, tf, every_tf, every_loop, names) -> Dict[str, List[str]]:
    """The label each shown box carries under every variant (module doc)."""
    f = tf.fused
    out = {"detector": [loop.detector_names[int(c)] for c in f.det_classes],
           "per_frame": [names[int(c)] for c in every_tf.frame_classes]}
    n, K = len(f), loop.class_map.num_probs
    for variant, lp, vote, power in (("track_last", loop, "last", 1), ("track_mean", loop, "mean", 1),
                                     ("track_weighted", loop, "weighted", 1),
                                     ("track_weighted_area", loop, "weighted", 2),
                                     ("track_geometric", loop, "geometric", 1),
                                     ("all_views_weighted", every_loop, "weighted", 1)):
        probs, has = torch.zeros(n, K), torch.zeros(n, dtype=torch.bool)
        for i, tid in enumerate(tf.track_ids.tolist()):
            v = lp.tracks[tid].voted(vote, power)
            if v is not None:
                probs[i], has[i] = torch.from_numpy(v).float(), True
        classes = fuse(f.det_classes, f.det_scores, probs, has, loop.class_map, loop.second.fusion)[0]
        out[variant] = [names[int(c)] for c in classes]
    return out


class _Tally:
    def __init__(self):
        self.correct = {v: {b[2]: 0 for b in SIZE_BUCKETS} for v in VARIANTS}
        self.count = {b[2]: 0 for b in SIZE_BUCKETS}
        self.gt_objects = 0
        self.acc = {}
        self.pending = []  # (bucket, category, box index, track id, det class, det score) for track_final

    def bucket(self, size: float) -> str:
        return next(name for lo, hi, name in SIZE_BUCKETS if lo <= size < hi)

    def add(self, gt, tf, labels: Dict[str, List[str]], frame: int, min_visible: float):
        boxes, track_ids = tf.fused.boxes.numpy(), tf.track_ids.tolist()
        gt = [g for g in gt if g["visible"] >= min_visible]
        self.gt_objects += len(gt)
        gt_boxes = np.array([g["bbox"] for g in gt], np.float32).reshape(-1, 4)
        matches, iou = _match(gt_boxes, boxes)
        for i, j in matches:
            b = self.bucket(gt[i]["size"])
            self.count[b] += 1
            for v in ONLINE:
                self.correct[v][b] += labels[v][j] == gt[i]["category"]
            self.pending.append((b, gt[i]["category"], track_ids[j], int(tf.fused.det_classes[j]),
                                 float(tf.fused.det_scores[j])))
        self._mot(gt, iou, labels, track_ids, frame)

    def finish_video(self, loop, names) -> None:
        """``track_final``: every matched box labelled with its track's final weighted vote."""
        if not self.pending:
            return
        K = loop.class_map.num_probs
        n = len(self.pending)
        probs, has = torch.zeros(n, K), torch.zeros(n, dtype=torch.bool)
        for i, (_, _, tid, _, _) in enumerate(self.pending):
            v = loop.tracks[tid].voted("weighted")
            if v is not None:
                probs[i], has[i] = torch.from_numpy(v).float(), True
        det_c = torch.tensor([p[3] for p in self.pending], dtype=torch.long)
        det_s = torch.tensor([p[4] for p in self.pending], dtype=torch.float32)
        classes = fuse(det_c, det_s, probs, has, loop.class_map, loop.second.fusion)[0]
        for (b, cat, _, _, _), c in zip(self.pending, classes.tolist()):
            self.correct["track_final"][b] += names[c] == cat
        self.pending = []

    def _mot(self, gt, iou, labels, track_ids, frame):
        try:
            import motmetrics as mm
        except ImportError:
            return
        for v in ("class_agnostic",) + ONLINE[1:]:
            acc = self.acc.setdefault(v, mm.MOTAccumulator(auto_id=False))
            d = 1 - iou
            d[iou < 0.5] = np.nan
            if v != "class_agnostic":
                same = np.array([[g["category"] == lab for lab in labels[v]] for g in gt], bool).reshape(d.shape)
                d[~same] = np.nan
            base = self.video * 1_000_000  # motmetrics wants numeric ids, unique across videos
            acc.update([base + int(g["id"]) for g in gt], [base + int(t) for t in track_ids], d,
                       frameid=self.frame_offset + frame)

    def summary(self) -> Dict[str, object]:
        total = sum(self.count.values())
        acc = {v: {b: (self.correct[v][b] / self.count[b] if self.count[b] else None) for b in self.count}
               for v in VARIANTS}
        for v in VARIANTS:
            acc[v]["all"] = sum(self.correct[v].values()) / total if total else None
        out = {"accuracy": acc, "matched_boxes": dict(self.count, all=total), "gt_objects": self.gt_objects,
               "recall": total / self.gt_objects if self.gt_objects else None}
        if self.acc:
            import motmetrics as mm

            mh = mm.metrics.create()
            out["idf1"] = {v: float(mh.compute(a, metrics=["idf1"], name=v)["idf1"].iloc[0])
                           for v, a in self.acc.items()}
        return out


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def run_video(
    *,
    device: str = "cpu",
    num_videos: int = 4,
    num_frames: int = 150,
    image_size: int = 512,
    num_objects: int = 10,
    seed: int = 11,
    reinfer_area: float = 0.2,
    reinfer_interval: int = 30,
    min_side: float = 0.0,
    min_visible: float = 0.5,
    min_score: float = 0.1,
    max_distance: float = 0.6,
    weights_dir: Optional[os.PathLike] = None,
    detector_config: Optional[os.PathLike] = None,
    log: Callable[[str], None] = print,
) -> Dict[str, object]:
    """``weights_dir``, ``detector_config``: the demo models (``load_demo_models``)."""
    if weights_dir is None or detector_config is None:
        raise ValueError("the video section needs the demo models: weights_dir=DIR and detector_config=YAML")
    first, second = load_demo_models(device, weights_dir, detector_config)
    names = list(second.output_class_names)
    policy = ReinferOptions(reinfer_area=reinfer_area, reinfer_interval=reinfer_interval, min_side=min_side)
    tracker = TrackerOptions(min_score=min_score, max_distance=max_distance)
    scene_o = MovingSceneOptions(image_size=image_size, num_frames=num_frames, num_objects=num_objects)
    tally = _Tally()
    t = {"detector": 0.0, "track_loop": 0.0, "every_box": 0.0}
    calls = {"policy": 0, "every_box": 0}
    frames_total = boxes_total = 0
    for v in range(num_videos):
        scene = MovingScene(v, seed=seed, options=scene_o)
        frames = [scene.frame(k) for k in range(num_frames)]
        loop = TrackingLoop(first, second, TrackOptions(tracker=tracker, reinfer=policy), source_name=f"video{v}")
        every = TrackingLoop(first, second, TrackOptions(tracker=tracker, reinfer=policy, every_frame=True),
                             source_name=f"video{v}")
        tally.video, tally.frame_offset = v, v * num_frames
        for k, (image, gt) in enumerate(frames):
            frame = Frame(k, image, k / scene_o.fps)
            dets, dt = _timed(every.detect, frame)
            t["detector"] += dt
            with torch.inference_mode():
                tf, dt = _timed(loop.step, frame)
                t["track_loop"] += dt
                etf, dt = _timed(every.step, frame, dets)
                t["every_box"] += dt
            if not torch.equal(tf.track_ids, etf.track_ids):
                raise RuntimeError(f"video {v} frame {k}: the two loops' tracks differ (non-deterministic detector?)")
            labels = _labels(loop, tf, etf, every, names)
            tally.add(gt, tf, labels, k, min_visible)
        tally.finish_video(loop, names)
        calls["policy"] += loop.classifier_calls
        calls["every_box"] += every.classifier_calls
        frames_total += loop.frames
        boxes_total += loop.boxes_seen
        log(f"  video {v}: {loop.frames} frames, {len(loop.tracks)} tracks, classifier calls "
            f"{loop.classifier_calls} (policy) vs {every.classifier_calls} (every box)")
    t["every_box"] += t["detector"]  # its detections are step 1's
    res = tally.summary()
    res.update({
        "device": device, "videos": num_videos, "frames": frames_total, "boxes": boxes_total,
        "scene": {"image_size": image_size, "num_frames": num_frames, "num_objects": num_objects, "seed": seed},
        "policy": {"min_score": min_score, "max_distance": max_distance, "reinfer_area": reinfer_area,
                   "reinfer_interval": reinfer_interval, "min_side": min_side},
        "classifier_calls": calls,
        "classifier_calls_per_frame": {k: c / max(frames_total, 1) for k, c in calls.items()},
        "calls_ratio": calls["policy"] / max(calls["every_box"], 1),
        "frames_per_s": {k: frames_total / s if s > 0 else None for k, s in t.items()},
        "seconds": t, "min_visible": min_visible, "classifier": "demo_weights/classifier.pth (v3_79 w0.25)",
        "detector": "demo_weights/detector.pth (R-18 FPN, 256 px)",
    })
    acc = res["accuracy"]
    log(f"  classifier calls per frame: policy {res['classifier_calls_per_frame']['policy']:.2f}, every box "
        f"{res['classifier_calls_per_frame']['every_box']:.2f} (ratio {res['calls_ratio']:.3f})")
    log("  top-1 of the shown label: " + ", ".join(f"{v} {100 * acc[v]['all']:.1f} %" for v in VARIANTS
                                                   if acc[v]["all"] is not None))
    return res


