"""One frame at a time: detect, track, classify the tracks whose view is due (``temporal``), vote, fuse.

``TrackingLoop(first_stage, second_stage, options).step(frame) -> TrackedFrame``. The second stage is the
``crop_classifier.second_stage.SecondStage``: the loop uses its ``eligible`` (class selection, size gates,
croppable boxes) and ``classify`` for the boxes that are due, then hands the tracks' voted probabilities to
its ``fuse`` (gate calibration, the fusion rule, NMS): the call still images go through, so a frame's boxes
are fused exactly as a still image's are.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import Tensor

from ..second_stage.fusion import fuse
from ..structures import FusedDetections, ImageRecord, frame_name
from .sources import Frame
from .temporal import ReinferOptions, TrackState, reinfer_reason, resolution_weight
from .tracking import BoxTracker, TrackerOptions, select_for_tracking

__all__ = ["TrackOptions", "TrackedFrame", "TrackingLoop"]


@dataclass(frozen=True)
class TrackOptions:
    tracker: TrackerOptions = TrackerOptions()
    reinfer: ReinferOptions = ReinferOptions()
    every_frame: bool = False  # classify every box of every frame (the baseline the policy is measured against)


@dataclass
class TrackedFrame:
    """One frame's output: ``fused`` carries the track's current class/score per box (``cls_probs`` = the
    track's voted probabilities, ``classified`` = the track has at least one classified view); ``frame_*``
    is this frame's own classifier result (where ``frame_classified``)."""

    index: int
    timestamp: float
    fused: FusedDetections
    track_ids: Tensor  # [N] int64
    frame_classified: Tensor  # [N] bool: classified in this frame
    frame_classes: Tensor  # [N] output class from this frame's own view alone
    frame_cls_scores: Tensor  # [N] (NaN where not classified in this frame)
    frame_probs: Tensor  # [N, K] this frame's own probabilities (zeros where not classified)
    reasons: List[str] = field(default_factory=list)  # per box: first | grew | interval | every | ""


class TrackingLoop:
    def __init__(self, first_stage: Any, second_stage: Any, options: TrackOptions = TrackOptions(),
                 source_name: str = "video", source_path: Optional[str] = None):
        self.first, self.second, self.options = first_stage, second_stage, options
        self.source_name = source_name  # outputs' name of the source (vis/NAME.mp4, the "video" field)
        self.source_path = source_path  # the video file or stream it reads (frames are named after it)
        self.tracker = BoxTracker(options.tracker)
        self.tracks: Dict[int, TrackState] = {}
        self.classifier_calls = 0  # crops classified
        self.classify_batches = 0  # classify() invocations
        self.boxes_seen = 0
        self.frames = 0
        # What the first stage gave before the tracker's min_score, so an empty run can say why.
        self.detector_boxes = 0
        self.below_min_score = 0
        self.max_detector_score: Optional[float] = None
        # A view's resolution weight saturates at the input size; a routed classifier's largest route takes
        # detail up to its own size, so more native pixels count up to there.
        routes = second_stage.routes
        self.input_size = int(max(routes.input_sizes) if routes is not None else second_stage.crop.size)
        self.routes = routes
        self.route_crops: Dict[str, int] = {a: 0 for a in routes.archs} if routes is not None else {}
        self.context = float(second_stage.crop.context)
        self.class_map = second_stage.class_map
        self.output_names = list(second_stage.output_class_names)
        self.detector_names = list(self.class_map.detector_classes)

    def detect(self, frame: Frame):
        # The naming rule still images follow too (structures.frame_name): a folder's frame is its image file,
        # a video's frame "clip.mp4#000012", so one detections file serves both runs.
        name = frame.path or frame_name(self.source_path or self.source_name, frame.index)
        record = ImageRecord(name, frame.image, extra={"video": self.source_name, "frame": frame.index})
        return self.first.detect([record])[0]

    def step(self, frame: Frame, dets: Optional[Any] = None) -> TrackedFrame:
        """Processes one frame (``dets``: its first-stage detections when already computed)."""
        dets = self.detect(frame) if dets is None else dets
        self._count_detections(dets.scores)
        keep = select_for_tracking(dets.boxes, dets.scores, self.options.tracker)
        boxes_np = dets.boxes[keep]
        ids = self.tracker.update(boxes_np, dets.scores[keep])
        boxes = torch.from_numpy(boxes_np).float()
        det_classes = torch.from_numpy(dets.classes[keep]).long()
        det_scores = torch.from_numpy(dets.scores[keep]).float()
        image_t = torch.from_numpy(frame.image).permute(2, 0, 1)
        n = len(keep)
        eligible = self.second.eligible(boxes, det_classes, tuple(image_t.shape[-2:])).cpu()
        reasons = self._due(frame.index, ids, boxes_np, eligible)
        due = torch.tensor([bool(r) for r in reasons], dtype=torch.bool)
        K = self.class_map.num_probs
        frame_probs = torch.zeros(n, K)
        if bool(due.any()):
            probs = self.second.classify([image_t], [boxes[due]])[0].float().cpu()
            frame_probs[due] = probs
            self.classifier_calls += int(due.sum())
            self.classify_batches += 1
            if self.routes is not None:  # a routed classifier: crops per route, as tools/infer.py's summary has
                sizes = self.second.crop_sizes(boxes[due]).tolist()
                for arch, size in zip(self.routes.archs, self.routes.input_sizes):
                    self.route_crops[arch] += sizes.count(int(size))
        voted = torch.zeros(n, K)
        has_vote = torch.zeros(n, dtype=torch.bool)
        for i in range(n):
            st = self.tracks[int(ids[i])]
            if bool(due[i]):
                st.add_view(frame.index, boxes_np[i], frame_probs[i].numpy(),
                            resolution_weight(boxes_np[i], self.context, self.input_size))
            v = st.voted(self.options.reinfer.vote, self.options.reinfer.weight_power)
            if v is not None:
                voted[i] = torch.from_numpy(v).float()
                has_vote[i] = True
        fused = self.second.fuse(boxes, det_classes, det_scores, voted, has_vote)
        own_classes, _, _, own_scores = fuse(det_classes, det_scores, frame_probs, due, self.class_map,
                                             self.second.fusion, self.second.rule.background_drop)
        at = fused.index  # the kept boxes' rows here (filter and NMS drop some)
        for i, k in enumerate(at.tolist()):
            st = self.tracks[int(ids[k])]
            st.class_name, st.score = self.output_names[int(fused.classes[i])], float(fused.scores[i])
            st.det_class_name = self.detector_names[int(det_classes[k])]
        self.frames += 1
        self.boxes_seen += n
        fused.index = torch.from_numpy(keep).long()[at]  # positions in the first stage's output
        return TrackedFrame(frame.index, frame.timestamp, fused, torch.from_numpy(ids).long()[at], due[at],
                            own_classes[at], own_scores[at], frame_probs[at], [reasons[k] for k in at.tolist()])

    def _count_detections(self, scores: np.ndarray) -> None:
        self.detector_boxes += len(scores)
        if len(scores):
            self.below_min_score += int((scores < self.options.tracker.min_score).sum())
            top = float(np.max(scores))
            self.max_detector_score = top if self.max_detector_score is None else max(self.max_detector_score, top)

    def _due(self, frame_index: int, ids: np.ndarray, boxes: np.ndarray, eligible: Tensor) -> List[str]:
        reasons = []
        for i, tid in enumerate(ids.tolist()):
            st = self.tracks.get(tid)
            if st is None:
                st = self.tracks[tid] = TrackState(tid, frame_index, frame_index)
            st.seen(frame_index)
            if not bool(eligible[i]):
                reasons.append("")
            elif self.options.every_frame:
                reasons.append("every")
            else:
                reasons.append(reinfer_reason(st, boxes[i], frame_index, self.options.reinfer))
        return reasons

    def tracks_summary(self) -> List[Dict[str, Any]]:
        """Per track: class, score, first/last frame, frames seen and the classified views (tracks.json)."""
        out = []
        for st in sorted(self.tracks.values(), key=lambda s: s.track_id):
            out.append({"track_id": st.track_id, "class": st.class_name, "score": _num(st.score),
                        "det_class": st.det_class_name, "first_frame": st.first_frame, "last_frame": st.last_frame,
                        "frames": st.frames, "views_classified": len(st.views),
                        "views": [{"frame_index": f, "weight": round(w, 4)} for f, w, _ in st.views]})
        return out

    def counters(self) -> Dict[str, Any]:
        return {"frames": self.frames, "boxes": self.boxes_seen, "tracks": len(self.tracks),
                "classifier_calls": self.classifier_calls, "classify_batches": self.classify_batches,
                "classifier_calls_per_frame": self.classifier_calls / max(self.frames, 1),
                "classifier_calls_per_box": self.classifier_calls / max(self.boxes_seen, 1),
                "detector_boxes": self.detector_boxes, "below_min_score": self.below_min_score,
                "max_detector_score": _num(self.max_detector_score),
                **({"route_crops": dict(self.route_crops)} if self.routes is not None else {})}


def _num(x: float) -> Optional[float]:
    return None if x is None or not np.isfinite(x) else round(float(x), 5)
