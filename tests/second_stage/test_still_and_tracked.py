"""A frame classified by the tracking loop is fused exactly as the same image run still; frames are named
by one rule with and without tracking."""
import cv2
import numpy as np
import pytest
import torch

from crop_classifier.detectors import DetectionsFile, FirstStage
from crop_classifier.inference.inputs import iter_records
from crop_classifier.second_stage import SecondStage
from crop_classifier.structures import ImageDetections, ImageRecord
from crop_classifier.video import Frame, ReinferOptions, TrackerOptions, TrackingLoop, TrackOptions
from crop_classifier.video.sources import FrameSource
from stage_helpers import colour_classifier, colour_image


class FixedBoxes(FirstStage):
    class_names = ["thing", "other"]

    def __init__(self, dets):
        self.dets, self.keys = dets, []

    def detect(self, records):
        self.keys += [r.key for r in records]
        return [self.dets for _ in records]


def _scene():
    img, boxes, _ = colour_image()
    big = torch.tensor([[60.0, 0, 159, 35]])  # a 99x35 box: over the size gate below
    twin = torch.tensor([[12.0, 12, 30, 30]])  # a second hypothesis on the red square (IoU 0.81)
    boxes = torch.cat([boxes, big, twin])
    return img, ImageDetections(boxes.numpy(), np.array([0, 0, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.6, 0.5]))


@pytest.mark.parametrize("fusion", ["replace", "rescore", "filter"])
def test_frame_zero_of_a_track_equals_the_still_image(fusion):
    pytest.importorskip("norfair")
    img, dets = _scene()
    calibration = {"score_calibration": {"red": 0.5, "green": 0.8, "blue": 0.2}}
    stage = SecondStage(colour_classifier(**calibration), ["thing", "other"], class_map="thing=red,green;other=*",
                        fusion=fusion, max_box_size=60)
    still = stage.run([img], [torch.from_numpy(dets.boxes)], [torch.from_numpy(dets.classes)],
                      [torch.from_numpy(dets.scores)]).detections[0]
    # the tracker's own class-agnostic NMS off, so the second stage's NMS is what removes the twin
    loop = TrackingLoop(FixedBoxes(dets), stage, TrackOptions(tracker=TrackerOptions(nms_iou=0.0),
                                                              reinfer=ReinferOptions(reinfer_interval=1)))
    tracked = loop.step(Frame(0, img.permute(1, 2, 0).numpy().copy(), 0.0)).fused
    assert sorted(tracked.index.tolist()) == sorted(still.index.tolist())
    # replace re-labels "thing" boxes: the twin now overlaps the red box of the same class and is removed
    assert (4 in still.index.tolist()) == (fusion != "replace")
    assert still.dropped == tracked.dropped
    by_index = {int(i): k for k, i in enumerate(still.index)}
    for k, i in enumerate(tracked.index.tolist()):
        j = by_index[i]
        assert int(tracked.classes[k]) == int(still.classes[j])
        assert float(tracked.scores[k]) == pytest.approx(float(still.scores[j]), abs=1e-6)
    # the size-gated box's score is calibrated on both paths: 0.6 x the mean calibration of its set ("*")
    k = tracked.index.tolist().index(3)
    assert float(tracked.scores[k]) == pytest.approx(0.6 * (0.5 + 0.8 + 0.2) / 3, abs=1e-6)


def test_frames_are_named_alike_with_and_without_tracking(tmp_path):
    pytest.importorskip("norfair")  # the tracking loop's tracker (the [video] extra)
    img, dets = _scene()
    folder = tmp_path / "frames"
    folder.mkdir()
    hwc = img.permute(1, 2, 0).numpy()
    for i in range(2):
        cv2.imwrite(str(folder / f"{i:06d}.png"), hwc[:, :, ::-1])
    first = FixedBoxes(dets)
    stage = SecondStage(colour_classifier(), ["thing", "other"])
    source = FrameSource(str(folder))
    loop = TrackingLoop(first, stage, TrackOptions(), source_name=source.name, source_path=str(folder))
    for frame in source:
        loop.detect(frame)
    assert first.keys == ["000000.png", "000001.png"]  # a folder's frames: their file names, as still images
    first.keys = []
    loop = TrackingLoop(first, stage, TrackOptions(), source_name="clip", source_path=str(tmp_path / "clip.mp4"))
    loop.detect(Frame(12, hwc, 0.5))
    assert first.keys == ["clip.mp4#000012"]  # a video's frame, as tools/infer.py names it without --track


def test_still_video_frames_are_named_as_tracked_ones(tmp_path):
    """Without --track a video's frames are ``clip.mp4#000000``, the name the tracking loop uses (above), so one
    detections file serves both runs."""
    img, _ = _scene()
    hwc = img.permute(1, 2, 0).numpy()
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 5, (160, 120))
    for _ in range(2):
        writer.write(np.ascontiguousarray(hwc[:, :, ::-1]))
    writer.release()
    keys = [r.key for r in iter_records([str(path)], [])]
    assert keys == ["clip.mp4#000000", "clip.mp4#000001"]
    dfile = tmp_path / "dets.json"
    dfile.write_text('[{"file_name": "clip.mp4#000001", "bbox": [10, 10, 20, 20], "category_id": 1, '
                     '"category_name": "thing", "score": 0.9}]')
    found = DetectionsFile(str(dfile)).detect([ImageRecord(str(path) + "#000001", hwc)])
    assert len(found[0]) == 1
