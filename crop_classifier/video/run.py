"""``run_tracking(sources, first_stage, second_stage, options, output_dir) -> summary``: the ``--track`` run.

Writes into ``output_dir``:

* ``frames.jsonl``: one line per processed frame (``video``, ``frame_index``, ``timestamp``, ``detections``),
  appended and flushed as the run goes: a run that stops (Ctrl-C, a stream that dies) keeps every frame done;
* ``results.json``: COCO-style results of every frame's boxes (``video``, ``frame_index``, ``track_id``,
  ``category_id``/``category_name``/``score`` = the track's current class, ``frame_category_name``/
  ``frame_cls_score`` = this frame's own classifier result where it was classified, the detector's own
  class and score), written atomically at the end (also after an interruption);
* ``tracks.json``: per track ``video``, ``track_id``, ``class``, ``score``, first/last frame, views classified;
* ``vis/NAME.mp4``: the annotated video (``draw_tracks``: ``#track detector class -> class score`` coloured by
  what the second stage did, ``*`` = classified in this frame, a legend strip under the frame);
* ``summary.json``: counters (frames, boxes, tracks, classifier calls), per-source stats (corrupt frames
  skipped, reopen attempts, why it ended), options, what was written and whether the run was interrupted.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import cv2
import numpy as np

from ..errors import UsageError
from ..coco_io import coco_bbox
from ..utils.drawing import draw
from ..utils.io import atomic_save_json
from .loop import TrackedFrame, TrackingLoop, TrackOptions
from .sources import FrameSource, SourceOptions, source_name
from .tracking import require_tracker

logger = logging.getLogger(__name__)

__all__ = ["RunOptions", "run_tracking", "frame_results"]


@dataclass(frozen=True)
class RunOptions:
    track: TrackOptions = TrackOptions()
    source: SourceOptions = SourceOptions()
    vis: bool = True
    vis_score_thresh: float = 0.0
    progress: bool = True
    category_ids: Optional[Dict[str, int]] = None  # output class name -> COCO id (default: position + 1)
    max_frames: int = 0  # stop each source after this many frames (0 = all)


def _num(x) -> Optional[float]:
    x = float(x)
    return None if not np.isfinite(x) else round(x, 5)


def frame_results(video: str, tf: TrackedFrame, output_names: Sequence[str], detector_names: Sequence[str],
                  cat_ids: Dict[str, int], image_id: Optional[int] = None) -> List[dict]:
    """COCO-style results of one tracked frame (see module doc); ``image_id`` unique over the run's frames
    (default: the frame index + 1)."""
    f = tf.fused
    out = []
    for i in range(len(f)):
        name = output_names[int(f.classes[i])]
        r = {"video": video, "frame_index": int(tf.index),
             "image_id": int(tf.index) + 1 if image_id is None else int(image_id),
             "track_id": int(tf.track_ids[i]), "category_id": cat_ids[name], "category_name": name,
             "bbox": coco_bbox(f.boxes[i].tolist()), "score": _num(f.scores[i]),
             "cls_score": _num(f.cls_scores[i]), "det_category_name": detector_names[int(f.det_classes[i])],
             "det_score": _num(f.det_scores[i]), "frame_classified": bool(tf.frame_classified[i])}
        if r["frame_classified"]:
            r["frame_category_name"] = output_names[int(tf.frame_classes[i])]
            r["frame_cls_score"] = _num(tf.frame_cls_scores[i])
            r["reinfer_reason"] = tf.reasons[i]
        out.append(r)
    return out


def draw_tracks(image_rgb: np.ndarray, dets: Any, tf: TrackedFrame, output_names: Sequence[str],
                detector_names: Sequence[str], score_thresh: float = 0.0):
    """A video frame drawn as still pictures are (``utils.drawing.draw``: colour by what the second stage did,
    dropped boxes dashed, a legend strip), each label led by the track id (``#7 car -> truck 0.81``; `` *``:
    classified in this frame).

    Args:
        image_rgb: HxWx3 uint8 RGB frame. dets: the frame's first-stage ``ImageDetections`` (``tf.fused.index``
            points into it). tf: the loop's output. score_thresh: boxes are drawn at fused score >= it.

    Returns:
        (picture (H + legend)xWx3 uint8 RGB, boxes drawn).
    """
    marks = [" *" if bool(c) else "" for c in tf.frame_classified]
    return draw(image_rgb, dets, tf.fused, output_names, detector_names, score_thresh, tf.track_ids, marks)


@dataclass
class _Outputs:
    """Files of a run, opened lazily; ``close()`` finalises everything written so far."""

    out_dir: Path
    vis: bool
    fps: float = 25.0
    frames_written: int = 0  # image ids count frames over every source of the run
    results: List[dict] = field(default_factory=list)
    tracks: List[dict] = field(default_factory=list)
    written: List[str] = field(default_factory=list)
    _jsonl: Any = None
    _writer: Any = None
    _vis_path: Optional[Path] = None

    def frame(self, video: str, tf: TrackedFrame, rows: List[dict], picture: Optional[np.ndarray]) -> None:
        if self._jsonl is None:
            self._jsonl = open(self.out_dir / "frames.jsonl", "w")  # one run's frames (--track has no --resume)
        self._jsonl.write(json.dumps({"video": video, "frame_index": tf.index, "timestamp": round(tf.timestamp, 4),
                                      "detections": rows}) + "\n")
        self._jsonl.flush()
        self.results.extend(rows)
        if picture is not None:
            self._video_frame(video, picture)

    def _video_frame(self, video: str, picture: np.ndarray) -> None:
        if self._writer is None:
            self._vis_path = self.out_dir / "vis" / f"{video}.mp4"
            self._vis_path.parent.mkdir(parents=True, exist_ok=True)
            h, w = picture.shape[:2]
            self._writer = cv2.VideoWriter(str(self._vis_path), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
        self._writer.write(np.ascontiguousarray(picture[:, :, ::-1]))

    def end_source(self) -> None:
        if self._writer is not None:
            self._writer.release()  # an mp4 is only playable once released: done for every source, even on Ctrl-C
            self.written.append(str(self._vis_path))
            self._writer = self._vis_path = None

    def close(self, summary: Dict[str, Any]) -> None:
        self.end_source()
        if self._jsonl is not None:
            self._jsonl.close()
            self.written.append(str(self.out_dir / "frames.jsonl"))
        atomic_save_json(self.out_dir / "results.json", self.results)
        atomic_save_json(self.out_dir / "tracks.json", self.tracks)
        self.written += [str(self.out_dir / "results.json"), str(self.out_dir / "tracks.json"),
                         str(self.out_dir / "summary.json")]
        summary["written"] = list(self.written)
        atomic_save_json(self.out_dir / "summary.json", summary)


def _progress(enabled: bool, total: Optional[int], name: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=name, unit="frame", dynamic_ncols=True)


def _unique_names(specs: Sequence[str]) -> List[str]:
    """``source_name`` of each input, made unique in input order (``a/clip.mp4``, ``b/clip.mp4`` -> ``clip``,
    ``clip_2``): output files and the ``video`` field never mix two sources."""
    seen: Dict[str, int] = {}
    out = []
    for spec in specs:
        base = source_name(spec)
        n = seen[base.lower()] = seen.get(base.lower(), 0) + 1
        out.append(base if n == 1 else f"{base}_{n}")
    return out


def _run_source(spec: str, name: str, first_stage, second_stage, o: RunOptions, outputs: _Outputs, cat_ids,
                summary: Dict[str, Any]) -> None:
    source = FrameSource(spec, o.source)
    source.name = name
    loop = TrackingLoop(first_stage, second_stage, o.track, source_name=source.name, source_path=spec)
    entry: Dict[str, Any] = {"input": spec, "name": source.name}
    summary["sources"].append(entry)
    bar = None
    try:
        for frame in source:
            if bar is None:
                outputs.fps = source.fps
                total = -(-source.frame_count // o.source.stride) if source.frame_count else None
                bar = _progress(o.progress, total, source.name)
            dets = loop.detect(frame)
            tf = loop.step(frame, dets)
            outputs.frames_written += 1
            rows = frame_results(source.name, tf, loop.output_names, loop.detector_names, cat_ids,
                                 outputs.frames_written)
            pic = None
            if outputs.vis:
                pic, n_drawn = draw_tracks(frame.image, dets, tf, loop.output_names, loop.detector_names,
                                           o.vis_score_thresh)
                summary["totals"]["vis_empty"] += int(len(tf.fused) > 0 and n_drawn == 0)
            outputs.frame(source.name, tf, rows, pic)
            if bar is not None:
                bar.update(1)
            if o.max_frames and loop.frames >= o.max_frames:
                break
    finally:
        if bar is not None:
            bar.close()
        outputs.end_source()
        outputs.tracks.extend({"video": source.name, **t} for t in loop.tracks_summary())
        entry.update(loop.counters())
        entry["source"] = source.stats.to_dict()
        for k in ("frames", "boxes", "tracks", "classifier_calls", "detector_boxes", "below_min_score"):
            summary["totals"][k] += entry[k]
        if entry["max_detector_score"] is not None:
            top = summary["totals"]["max_detector_score"]
            summary["totals"]["max_detector_score"] = max(entry["max_detector_score"], top or 0.0)
        for arch, n in entry.get("route_crops", {}).items():  # a routed classifier: crops per route
            routes = summary["totals"].setdefault("route_crops", {})
            routes[arch] = routes.get(arch, 0) + n


def empty_run_warnings(totals: Dict[str, Any], o: RunOptions) -> List[str]:
    """Why a run's results (or pictures) are empty, when they are: one line each (``summary["warnings"]``).

    Args:
        totals: ``summary["totals"]`` (frames, detector_boxes, below_min_score, max_detector_score, boxes,
            results, vis_empty).
        o: the run's options (the tracker's ``min_score``, ``vis_score_thresh``).

    Returns:
        The lines, [] when nothing is silently empty.
    """
    out = []
    min_score = o.track.tracker.min_score
    if totals["frames"] and not totals["detector_boxes"]:
        out.append(f"the first stage found no box in any of the {totals['frames']} frame(s)")
    elif totals["detector_boxes"] and not totals["boxes"]:
        out.append(f"no box was tracked: all {totals['detector_boxes']} first-stage boxes scored under the "
                   f"tracker's min score {min_score:g} (the highest {totals['max_detector_score']:g}); lower "
                   f"--track-min-score")
    if totals["boxes"] and not totals["results"]:
        out.append(f"all {totals['boxes']} tracked boxes were dropped by the second stage: results.json is empty")
    if totals.get("vis_empty"):
        out.append(f"{totals['vis_empty']} frame(s) of the video(s) drawn empty at --vis-score-thresh "
                   f"{o.vis_score_thresh:g}: the boxes kept there all scored below it")
    return out


def run_tracking(sources: Union[str, Sequence[str]], first_stage: Any, second_stage: Any,
                 options: RunOptions = RunOptions(), output_dir: Union[str, Path] = "output/track") -> Dict[str, Any]:
    """Tracks and classifies every source in turn (see module doc); returns the summary (also summary.json).

    ``summary["failed"]`` lists the sources that could not be opened or ended early (stalled / corrupt), each
    with the reason; ``summary["interrupted"]`` is True when Ctrl-C stopped the run (everything processed
    until then is written, ``summary["written"]`` names the files)."""
    require_tracker()  # a missing library is one usage error, not a failure of every source
    specs = [sources] if isinstance(sources, str) else list(sources)
    out_dir = Path(output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(second_stage.output_class_names)
    cat_ids = dict(options.category_ids or {n: i + 1 for i, n in enumerate(names)})
    outputs = _Outputs(out_dir, options.vis)
    summary: Dict[str, Any] = {"sources": [], "failed": [], "interrupted": False,
                               "totals": {"frames": 0, "boxes": 0, "tracks": 0, "classifier_calls": 0,
                                          "detector_boxes": 0, "below_min_score": 0, "max_detector_score": None,
                                          "vis_empty": 0},
                               "options": asdict(options), "categories": [{"id": cat_ids[n], "name": n} for n in names]}
    t0 = time.perf_counter()
    try:
        for spec, name in zip(specs, _unique_names(specs)):
            try:
                _run_source(spec, name, first_stage, second_stage, options, outputs, cat_ids, summary)
            except UsageError as e:
                summary["failed"].append({"input": spec, "reason": str(e)})
                logger.error("%s", e)
                continue
            ended = summary["sources"][-1]["source"]["ended"]
            if ended and ended != "end":
                summary["failed"].append({"input": spec, "reason": ended})
    except KeyboardInterrupt:
        summary["interrupted"] = True
    finally:
        summary["seconds"] = round(time.perf_counter() - t0, 3)
        t = summary["totals"]
        t["classifier_calls_per_frame"] = t["classifier_calls"] / max(t["frames"], 1)
        t["frames_per_s"] = t["frames"] / max(summary["seconds"], 1e-9)
        t["results"] = len(outputs.results)
        summary["warnings"] = empty_run_warnings(t, options)
        outputs.close(summary)
    if summary["interrupted"]:
        logger.warning("interrupted after %d frames; written: %s", summary["totals"]["frames"],
                       ", ".join(summary["written"]))
    return summary
