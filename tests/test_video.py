"""Video tracking: sources (files, sequences, stalls, corrupt frames), the re-inference policy, the track vote,
track ids in the outputs, interruption, supervision interop and the moving-scene generator."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from crop_classifier.data.synthetic_video import MovingScene, MovingSceneOptions, write_video
from crop_classifier.errors import UsageError
from stage_helpers import ScriptedStage
from crop_classifier.structures import ImageDetections
from crop_classifier.video import (Frame, FrameSource, ReinferOptions, RunOptions, SourceOptions, TrackingLoop,
                                   TrackOptions, TrackerOptions, resolution_weight, run_tracking)
from crop_classifier.video.temporal import TrackState, reinfer_reason

pytest.importorskip("norfair")

CLASSES = ["a", "b"]


# ----------------------------------------------------------------------------------------------- stubs
class StubSecondStage(ScriptedStage):
    """The second stage's shape (class_map, fusion, crop, eligible, classify) with scripted probabilities:
    a box whose short side is under 30 px gets ``small_p``, a larger one ``large_p``."""

    def __init__(self, small_p=(0.9, 0.1), large_p=(0.2, 0.8), fusion="replace", input_size=50, context=0.0):
        # no NMS: these scripted scenes test voting
        super().__init__(CLASSES, fusion, input_size, context, nms_thresh=0.0)
        self.small_p, self.large_p = torch.tensor(small_p), torch.tensor(large_p)
        self.calls = []

    def classify(self, images, boxes):
        out = []
        for b in boxes:
            self.calls.append(b.clone())
            short = (b[:, 2:] - b[:, :2]).min(dim=1).values
            out.append(torch.stack([self.small_p if s < 30 else self.large_p for s in short]) if len(b)
                       else torch.zeros(0, 2))
        return out


class StubFirstStage:
    """Detections per frame index from a callable ``boxes_at(frame) -> [N, 4]`` (class 0, score 0.9)."""

    class_names = CLASSES

    def __init__(self, boxes_at, interrupt_at=None):
        self.boxes_at, self.interrupt_at = boxes_at, interrupt_at

    def detect(self, records):
        out = []
        for r in records:
            t = r.extra["frame"]
            if self.interrupt_at is not None and t == self.interrupt_at:
                raise KeyboardInterrupt
            b = np.asarray(self.boxes_at(t), np.float32).reshape(-1, 4)
            out.append(ImageDetections(b, np.zeros(len(b)), np.full(len(b), 0.9)))
        return out


def growing_box(t):
    """One object moving right and growing: side 20 px at frame 0, +2 px per frame."""
    s = 20 + 2 * t
    return [[10 + t, 10, 10 + t + s, 10 + s]]


def frame_of(t, size=160):
    return Frame(t, np.zeros((size, size, 3), np.uint8), t / 25)


# ----------------------------------------------------------------------------------------------- policy + vote
def test_reinfer_triggers_first_growth_interval_and_size_gate():
    o = ReinferOptions(reinfer_area=0.2, reinfer_interval=30, min_side=10)
    st = TrackState(1, 0, 0)
    assert reinfer_reason(st, [0, 0, 8, 40], 0, o) == ""  # short side 8 < 10: too small to trust
    assert reinfer_reason(st, [0, 0, 20, 20], 0, o) == "first"
    st.add_view(0, [0, 0, 20, 20], np.array([1.0, 0.0]), 0.4)
    assert reinfer_reason(st, [0, 0, 20, 21.8], 5, o) == ""  # +9 % area
    assert reinfer_reason(st, [0, 0, 20, 24.2], 5, o) == "grew"  # +21 %
    assert reinfer_reason(st, [0, 0, 20, 20], 29, o) == ""
    assert reinfer_reason(st, [0, 0, 20, 20], 30, o) == "interval"
    assert reinfer_reason(st, [0, 0, 20, 20], 300, ReinferOptions(reinfer_interval=0)) == ""  # 0 = never


def test_resolution_weight_and_vote_rules():
    assert resolution_weight([0, 0, 20, 10], context=0.0, input_size=80) == pytest.approx(0.25)
    assert resolution_weight([0, 0, 20, 10], context=0.5, input_size=80) == pytest.approx(0.5)  # 20 * 2 = 40
    assert resolution_weight([0, 0, 200, 100], context=0.0, input_size=80) == 1.0  # capped at the input size
    st = TrackState(1, 0, 0)
    assert st.voted("weighted") is None
    st.add_view(0, [0, 0, 10, 10], np.array([0.9, 0.1]), 0.2)
    st.add_view(9, [0, 0, 80, 80], np.array([0.3, 0.7]), 1.0)
    np.testing.assert_allclose(st.voted("weighted"), [(0.18 + 0.3) / 1.2, (0.02 + 0.7) / 1.2])
    np.testing.assert_allclose(st.voted("mean"), [0.6, 0.4])
    np.testing.assert_allclose(st.voted("last"), [0.3, 0.7])
    np.testing.assert_allclose(st.voted("weighted", weight_power=2), [(0.036 + 0.3) / 1.04, (0.004 + 0.7) / 1.04])
    with pytest.raises(ValueError, match="vote"):
        ReinferOptions(vote="median")


def _run_loop(vote, frames=12, **reinfer):
    second = StubSecondStage()
    loop = TrackingLoop(StubFirstStage(growing_box), second,
                        TrackOptions(reinfer=ReinferOptions(vote=vote, **reinfer)))
    return loop, second, [loop.step(frame_of(t)) for t in range(frames)]


def test_loop_classifies_only_due_views_and_keeps_one_track_id():
    loop, second, out = _run_loop("weighted")
    # Side 20 + 2t: classified at first sight, then whenever the area is >= 1.2x that of the last classified view.
    due = [t for t, tf in enumerate(out) if bool(tf.frame_classified.any())]
    areas = {t: (20 + 2 * t) ** 2 for t in range(12)}
    expected, last = [], None
    for t in range(12):
        if last is None or areas[t] >= 1.2 * areas[last]:
            expected.append(t)
            last = t
    assert due == expected and len(due) < 12
    assert loop.classifier_calls == len(due) == sum(len(c) for c in second.calls)
    assert {int(tf.track_ids[0]) for tf in out} == {int(out[0].track_ids[0])}
    assert [tf.reasons[0] for tf in out if tf.reasons[0]] == ["first"] + ["grew"] * (len(due) - 1)


@pytest.mark.parametrize("vote, expected", [("weighted", "b"), ("mean", "a"), ("last", "b")])
def test_track_vote_rules_decide_the_shown_class(vote, expected):
    # Views with short side < 30 say a (0.9), larger ones b (0.8). Classified at t = 0 (side 20, weight 0.4) and
    # t = 10 (side 40, weight 0.8) only (growth needs +300 % area, no interval): weighted a 0.43 b 0.57,
    # mean a 0.55 b 0.45, last b.
    loop, _, out = _run_loop(vote, frames=11, reinfer_area=3.0, reinfer_interval=0)
    assert [t for t, tf in enumerate(out) if bool(tf.frame_classified[0])] == [0, 10]
    last = out[-1]
    assert CLASSES[int(last.fused.classes[0])] == expected
    assert CLASSES[int(last.frame_classes[0])] == "b"  # the frame's own result is the large view's
    assert CLASSES[int(out[5].fused.classes[0])] == "a"  # between views the track keeps its vote
    assert not bool(out[5].frame_classified[0]) and bool(out[5].fused.classified[0])


def test_every_frame_baseline_classifies_every_box():
    second = StubSecondStage()
    loop = TrackingLoop(StubFirstStage(lambda t: growing_box(t) + [[100, 100, 140, 140]]), second,
                        TrackOptions(every_frame=True))
    for t in range(5):
        loop.step(frame_of(t))
    assert loop.classifier_calls == 10 and loop.counters()["classifier_calls_per_frame"] == 2.0


def test_low_scores_and_duplicates_are_not_tracked():
    class Dup(StubFirstStage):
        def detect(self, records):
            b = np.array([[10, 10, 50, 50], [11, 10, 51, 50], [80, 80, 120, 120]], np.float32)
            return [ImageDetections(b, np.array([0, 1, 0]), np.array([0.9, 0.6, 0.1]))]

    loop = TrackingLoop(Dup(None), StubSecondStage(), TrackOptions(tracker=TrackerOptions(min_score=0.3, nms_iou=0.6)))
    tf = loop.step(frame_of(0))
    assert len(tf.fused) == 1 and float(tf.fused.det_scores[0]) == pytest.approx(0.9)


# ----------------------------------------------------------------------------------------------- sources
class FakeCapture:
    """A scripted cv2.VideoCapture: ``script`` items are frames, ``None`` (a failed read) or ``"bad"``."""

    def __init__(self, script, opened=True):
        self.script, self.opened, self.pos = script, opened, 0

    def isOpened(self):
        return self.opened

    def read(self):
        if self.pos >= len(self.script):
            return False, None
        item = self.script[self.pos]
        self.pos += 1
        if item is None:
            return False, None
        if isinstance(item, str):
            return True, np.zeros((4, 4), np.uint8)  # decoded but not an HxWx3 image
        return True, item

    def get(self, prop):
        return 0.0

    def set(self, prop, value):
        return True

    def release(self):
        pass


def _img(v):
    return np.full((8, 8, 3), v, np.uint8)


def test_stream_stall_is_retried_then_reported_and_corrupt_frames_are_counted():
    sessions = [FakeCapture([_img(1), "bad", _img(2), None]), FakeCapture([_img(3), None])]
    opened = []

    def factory(target):
        opened.append(target)
        return sessions.pop(0) if sessions else FakeCapture([], opened=False)

    src = FrameSource("rtsp://camera/1", SourceOptions(retries=2, retry_wait_s=0), capture_factory=factory,
                      sleep=lambda s: None)
    frames = list(src)
    assert [int(f.image[0, 0, 0]) for f in frames] == [1, 2, 3]
    assert [f.index for f in frames] == [0, 2, 3]  # the corrupt frame keeps its index
    assert src.stats.corrupt == 1 and src.stats.frames == 3
    # one stall recovered by a reopen; the second never recovers: 2 failed reopen attempts, then reported
    assert src.stats.retries == 3 and src.stats.ended.startswith("stalled: stream stalled")
    assert opened[0] == "rtsp://camera/1"


def test_camera_index_and_unopenable_stream():
    src = FrameSource("0", SourceOptions(retries=0), capture_factory=lambda t: FakeCapture([_img(5)]))
    assert [f.index for f in src] == [0] and src.name == "camera0"
    bad = FrameSource("http://nowhere/x", capture_factory=lambda t: FakeCapture([], opened=False))
    with pytest.raises(UsageError, match="cannot open"):
        list(bad)
    with pytest.raises(UsageError, match="no such file"):
        FrameSource("/no/such/video.mp4")


@pytest.fixture(scope="module")
def scene_video(tmp_path_factory):
    scene = MovingScene(0, seed=3, options=MovingSceneOptions(image_size=96, num_frames=12, num_objects=3,
                                                              min_size=16, max_size=40))
    return scene, write_video(scene, tmp_path_factory.mktemp("vid") / "scene.mp4")


def test_video_file_and_image_sequence_sources(scene_video, tmp_path):
    scene, path = scene_video
    src = FrameSource(str(path))
    frames = list(src)
    assert [f.index for f in frames] == list(range(12)) and src.stats.ended == "end"
    assert frames[0].image.shape == (96, 96, 3) and frames[0].image.dtype == np.uint8
    assert np.abs(frames[5].image.astype(int) - scene.frame(5)[0].astype(int)).mean() < 12  # RGB, same picture
    assert all(b.timestamp > a.timestamp for a, b in zip(frames, frames[1:]))
    seq = tmp_path / "seq"
    seq.mkdir()
    for t in range(4):
        cv2.imwrite(str(seq / f"{t:04d}.png"), scene.frame(t)[0][:, :, ::-1])
    (seq / "0002.png").write_bytes(b"not a png")  # corrupt: skipped and counted
    src = FrameSource(str(seq), SourceOptions(sequence_fps=10))
    got = list(src)
    assert [f.index for f in got] == [0, 1, 3] and src.stats.corrupt == 1 and got[2].timestamp == pytest.approx(0.3)


# ----------------------------------------------------------------------------------------------- outputs
def test_run_tracking_writes_frames_tracks_and_video(scene_video, tmp_path):
    _, path = scene_video
    first = StubFirstStage(lambda t: [[10, 10, 30 + t, 30 + t], [60, 60, 90, 90]])
    summary = run_tracking(str(path), first, StubSecondStage(), RunOptions(progress=False), tmp_path / "out")
    out = tmp_path / "out"
    results = json.loads((out / "results.json").read_text())
    assert len(results) == 24 and {r["video"] for r in results} == {"scene"}
    assert {r["frame_index"] for r in results} == set(range(12))
    ids = {r["track_id"] for r in results}
    assert len(ids) == 2
    assert all("frame_category_name" in r for r in results if r["frame_classified"])
    tracks = json.loads((out / "tracks.json").read_text())
    assert sorted(t["track_id"] for t in tracks) == sorted(ids)
    assert all(t["first_frame"] == 0 and t["last_frame"] == 11 and t["views_classified"] >= 1 for t in tracks)
    assert summary["totals"]["classifier_calls"] == sum(t["views_classified"] for t in tracks) < 24
    assert len((out / "frames.jsonl").read_text().splitlines()) == 12
    cap = cv2.VideoCapture(str(out / "vis" / "scene.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    cap.release()
    assert not summary["failed"] and not summary["interrupted"]


def test_interrupted_run_keeps_what_was_written(scene_video, tmp_path):
    _, path = scene_video
    first = StubFirstStage(lambda t: [[10, 10, 40, 40]], interrupt_at=5)
    summary = run_tracking([str(path), str(path)], first, StubSecondStage(), RunOptions(progress=False), tmp_path)
    assert summary["interrupted"] and summary["totals"]["frames"] == 5
    assert str(tmp_path / "vis" / "scene.mp4") in summary["written"]
    assert {r["frame_index"] for r in json.loads((tmp_path / "results.json").read_text())} == set(range(5))
    cap = cv2.VideoCapture(str(tmp_path / "vis" / "scene.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5  # the mp4 was finalised
    cap.release()
    assert json.loads((tmp_path / "summary.json").read_text())["interrupted"] is True


def test_missing_source_is_reported_and_the_rest_processed(scene_video, tmp_path):
    _, path = scene_video
    summary = run_tracking(["/no/such.mp4", str(path)], StubFirstStage(lambda t: []), StubSecondStage(),
                           RunOptions(progress=False, vis=False), tmp_path)
    assert [f["input"] for f in summary["failed"]] == ["/no/such.mp4"] and summary["totals"]["frames"] == 12


# ----------------------------------------------------------------------------------------------- interop
def test_supervision_round_trip():
    sv = pytest.importorskip("supervision")
    from crop_classifier.video.sv_interop import from_supervision, to_supervision

    loop, _, out = _run_loop("weighted", frames=3)
    tf = out[-1]
    det = to_supervision(tf.fused, tf.track_ids, loop.output_names)
    assert isinstance(det, sv.Detections) and len(det) == 1
    assert det.tracker_id.tolist() == tf.track_ids.tolist() and det.data["class_name"][0] in CLASSES
    assert det.data["det_class"].tolist() == tf.fused.det_classes.tolist()
    back, tids = from_supervision(det)
    assert torch.equal(tids, tf.track_ids)
    for name in ("boxes", "classes", "scores", "det_classes", "classified", "index", "cls_probs"):
        assert torch.allclose(getattr(back, name).float(), getattr(tf.fused, name).float()), name
    plain, none = from_supervision(sv.Detections(xyxy=np.array([[0, 0, 5, 5]], np.float32), class_id=np.array([1])))
    assert none is None and int(plain.det_classes[0]) == 1 and not bool(plain.classified[0])


# ----------------------------------------------------------------------------------------------- scenes
def test_moving_scenes_are_deterministic_with_identities_motion_and_occlusion():
    o = MovingSceneOptions(image_size=128, num_frames=40, num_objects=10, min_size=14, max_size=60)
    a, b = MovingScene(1, seed=5, options=o), MovingScene(1, seed=5, options=o)
    assert np.array_equal(a.frame(7)[0], b.frame(7)[0]) and a.frame(7)[1] == b.frame(7)[1]
    assert not np.array_equal(a.frame(7)[0], MovingScene(2, seed=5, options=o).frame(7)[0])
    gts = [a.objects_at(t) for t in range(40)]
    ids_per_frame = [{g["id"] for g in gt} for gt in gts]
    assert any(ids_per_frame[t] - ids_per_frame[0] for t in range(40))  # someone enters
    assert any(ids_per_frame[0] - ids_per_frame[t] for t in range(40))  # someone leaves
    assert any(g["visible"] < 0.9 for gt in gts for g in gt)  # occlusion or a frame edge
    sizes = {}
    for gt in gts:
        for g in gt:
            sizes.setdefault(g["id"], []).append(g["size"])
    assert any(s[-1] > 1.3 * s[0] for s in sizes.values()) and any(s[-1] < s[0] / 1.3 for s in sizes.values())
    cats = {}
    for gt in gts:
        for g in gt:
            assert cats.setdefault(g["id"], g["category"]) == g["category"]  # identity keeps its class


def test_loop_with_the_real_second_stage(scene_video):
    """The pipeline's SecondStage (tiny random classifier) drives the loop: same fusion, calls counted."""
    from crop_classifier.models import build_classifier
    from crop_classifier.second_stage import SecondStage

    scene, _ = scene_video
    torch.manual_seed(0)
    clf = build_classifier("v3_79", 2, width=0.125, aux_logits=False).eval()
    meta = {"arch": "v3_79", "class_names": CLASSES, "input_size": 79}
    second = SecondStage.from_model(clf, meta, CLASSES, class_map="*=*", fusion="replace", context=0.1, min_box_size=12)
    first = StubFirstStage(lambda t: [[10, 10, 40 + t, 40 + t], [50, 50, 58, 58]])  # the second box is gated
    loop = TrackingLoop(first, second, TrackOptions())
    out = [loop.step(Frame(t, scene.frame(t)[0], t / 25)) for t in range(6)]
    assert all(len(tf.fused) == 2 for tf in out)
    gated = [tf for tf in out]
    assert not any(bool(tf.frame_classified[tf.fused.boxes[:, 2] == 58].any()) for tf in gated)
    assert loop.classifier_calls == sum(int(tf.frame_classified.sum()) for tf in out) >= 1
    p = out[0].fused.cls_probs[out[0].frame_classified]
    ref = second.classify([torch.from_numpy(scene.frame(0)[0]).permute(2, 0, 1)],
                          [out[0].fused.boxes[out[0].frame_classified]])[0]
    assert torch.allclose(p, ref, atol=1e-5)


@pytest.mark.detectron2
def test_infer_track_end_to_end_with_the_demo_models(scene_video, tmp_path, capsys):
    """tools/infer.py --track: the demo detector + classifier on a short synthetic video; a missing source is
    listed (exit 1) while the video is processed; --track with --resume is a usage error (exit 2)."""
    pytest.importorskip("detectron2")
    from tool_loader import load_tool

    _, path = scene_video
    root = Path(__file__).resolve().parents[1]
    infer = load_tool("infer")
    base = ["--track", "--detector", "faster_rcnn",
            "--detector-config", str(root / "configs" / "d2" / "demo_synthetic_R18_FPN.yaml"),
            "--detector-weights", str(root / "demo_weights" / "detector.pth"),
            "--classifier-weights", str(root / "demo_weights" / "classifier.pth"), "--device", "cpu",
            "--no-progress", "--score-thresh", "0.05", "--track-min-score", "0.05", "--output", str(tmp_path / "out")]
    capsys.readouterr()
    rc = infer.main(base + ["--input", str(path), str(tmp_path / "missing.mp4")])
    io = capsys.readouterr()
    assert rc == 1 and "missing.mp4" in io.err and "frames: 12" in io.out
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["totals"]["frames"] == 12 and [f["input"] for f in summary["failed"]] == [str(tmp_path / "missing.mp4")]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results and all(isinstance(r["track_id"], int) and r["video"] == "scene" for r in results)
    tracks = json.loads((tmp_path / "out" / "tracks.json").read_text())
    assert {t["track_id"] for t in tracks} == {r["track_id"] for r in results}
    assert summary["totals"]["classifier_calls"] <= len(results)  # the policy never classifies more than every box
    assert (tmp_path / "out" / "vis" / "scene.mp4").is_file()
    assert infer.main(base + ["--input", str(path), "--resume"]) == 2
    assert "--track" in capsys.readouterr().err


def test_sources_with_the_same_name_keep_apart_and_image_ids_are_unique(scene_video, tmp_path):
    _, path = scene_video
    other = tmp_path / "b" / path.name
    other.parent.mkdir()
    other.write_bytes(path.read_bytes())
    first = StubFirstStage(lambda t: [[10, 10, 40, 40]])
    summary = run_tracking([str(path), str(other)], first, StubSecondStage(), RunOptions(progress=False),
                           tmp_path / "out")
    assert [s["name"] for s in summary["sources"]] == ["scene", "scene_2"]
    assert (tmp_path / "out" / "vis" / "scene.mp4").is_file() and (tmp_path / "out" / "vis" / "scene_2.mp4").is_file()
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    ids = {(r["video"], r["frame_index"]): r["image_id"] for r in results}
    assert len(set(ids.values())) == len(ids) == 24
    # a second run into the same folder rewrites frames.jsonl instead of appending to it
    run_tracking(str(path), first, StubSecondStage(), RunOptions(progress=False), tmp_path / "out")
    assert len((tmp_path / "out" / "frames.jsonl").read_text().splitlines()) == 12


class CountedCapture(FakeCapture):
    """A file capture that announces ``count`` frames (OpenCV's estimate) whatever it then delivers."""

    def __init__(self, script, count):
        super().__init__(script)
        self.count = count

    def get(self, prop):
        return float(self.count) if prop == cv2.CAP_PROP_FRAME_COUNT else 0.0

    def set(self, prop, value):  # a reopened file seeks back to where it stopped
        self.pos = int(value) if prop == cv2.CAP_PROP_POS_FRAMES else self.pos
        return True


@pytest.mark.parametrize("delivered, ended", [(99, "end"), (60, "stalled")])
def test_a_file_short_of_its_estimated_count_ends_but_a_truncated_one_is_reported(tmp_path, delivered, ended):
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"stand-in: the capture is scripted")
    src = FrameSource(str(path), SourceOptions(retries=1, retry_wait_s=0), sleep=lambda s: None,
                      capture_factory=lambda t: CountedCapture([_img(i % 250) for i in range(delivered)], 100))
    assert len(list(src)) == delivered and src.stats.ended.startswith(ended)
