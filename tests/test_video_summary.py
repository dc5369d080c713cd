"""--track: a frame drawn like still pictures (track id, detector class -> class), and a run whose video is
empty says why in summary.json and in tools/infer.py's printout (boxes under --track-min-score, nothing
detected, every picture empty at --vis-score-thresh)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from crop_classifier.data.synthetic_video import MovingScene, MovingSceneOptions, write_video
from crop_classifier.structures import ImageDetections
from crop_classifier.utils.drawing import RELABELLED, STATUS_COLOURS, plan_boxes
from crop_classifier.video import Frame, RunOptions, TrackingLoop, TrackOptions, TrackerOptions, run_tracking
from crop_classifier.video.run import draw_tracks, empty_run_warnings

from stage_helpers import ScriptedStage

pytest.importorskip("norfair")

CLASSES = ["a", "b"]


class _Second(ScriptedStage):
    """The second stage's shape with a classifier that always says class ``b``."""

    def __init__(self):
        super().__init__(CLASSES)

    def classify(self, images, boxes):
        return [torch.tensor([[0.1, 0.9]]).repeat(len(b), 1) for b in boxes]


class _First:
    """One box per frame, class ``a``, at a fixed ``score``."""

    class_names = CLASSES

    def __init__(self, score):
        self.score = score

    def detect(self, records):
        return [ImageDetections(np.array([[20, 20, 60, 60]], np.float32), [0], [self.score]) for _ in records]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    scene = MovingScene(0, seed=3, options=MovingSceneOptions(image_size=96, num_frames=6, num_objects=2,
                                                              min_size=16, max_size=40))
    return write_video(scene, tmp_path_factory.mktemp("vid") / "scene.mp4")


def test_a_frame_shows_track_id_and_the_changed_class():
    loop = TrackingLoop(_First(0.9), _Second(), TrackOptions())
    frame = Frame(0, np.zeros((120, 160, 3), np.uint8), 0.0)
    dets = loop.detect(frame)
    tf = loop.step(frame, dets)
    pic, n = draw_tracks(frame.image, dets, tf, loop.output_names, loop.detector_names, 0.3)
    assert n == 1 and pic.shape[1] == 160 and pic.shape[0] > 120
    assert loop.output_names[int(tf.fused.classes[0])] == "b"  # the classifier re-labelled a -> b
    assert all(np.abs(px.astype(int) - STATUS_COLOURS[RELABELLED]).max() <= 40 for px in pic[60, 25:55])
    labels = plan_boxes(dets, tf.fused, loop.output_names, loop.detector_names, 0.3, tf.track_ids).labels
    assert labels == [f"#{int(tf.track_ids[0])} a -> b 0.81"]  # replace: 0.9 (detector) x 0.9 (classifier)


def test_low_scoring_detector_run_says_why_it_is_empty(video, tmp_path):
    o = RunOptions(progress=False)  # the tracker's default min score 0.3
    s = run_tracking(str(video), _First(0.12), _Second(), o, tmp_path / "low")
    t = s["totals"]
    assert t["boxes"] == 0 and t["detector_boxes"] == t["below_min_score"] == t["frames"] == 6
    assert t["max_detector_score"] == pytest.approx(0.12)
    assert len(s["warnings"]) == 1 and "under the tracker's min score 0.3" in s["warnings"][0]
    assert "--track-min-score" in s["warnings"][0]
    assert json.loads((tmp_path / "low" / "summary.json").read_text())["warnings"] == s["warnings"]
    ok = run_tracking(str(video), _First(0.12), _Second(), RunOptions(
        progress=False, track=TrackOptions(tracker=TrackerOptions(min_score=0.1))), tmp_path / "ok")
    assert ok["totals"]["boxes"] == 6 and ok["warnings"] == []


def test_pictures_empty_at_the_threshold_are_counted(video, tmp_path):
    s = run_tracking(str(video), _First(0.9), _Second(), RunOptions(progress=False, vis_score_thresh=0.95),
                     tmp_path / "out")
    assert s["totals"]["vis_empty"] == 6 and any("--vis-score-thresh 0.95" in w for w in s["warnings"])
    cap = cv2.VideoCapture(str(tmp_path / "out" / "vis" / "scene.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 6  # every frame written, one size (legend included)
    cap.release()


def test_nothing_detected_is_said():
    totals = {"frames": 4, "detector_boxes": 0, "below_min_score": 0, "max_detector_score": None, "boxes": 0,
              "results": 0, "vis_empty": 0}
    assert empty_run_warnings(totals, RunOptions()) == ["the first stage found no box in any of the 4 frame(s)"]


def test_infer_track_prints_the_warning(video, tmp_path, capsys, monkeypatch):
    from tool_loader import load_tool

    infer = load_tool("infer")
    import crop_classifier.inference.runner as runner

    monkeypatch.setattr(runner, "build_stages", lambda o, device: (_First(0.12), _Second(), None))
    rc = infer.main(["--track", "--input", str(video), "--output", str(tmp_path / "out"), "--classifier-weights",
                     "unused.pth", "--no-progress", "--device", "cpu"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "no box was tracked" in out and "--track-min-score" in out
