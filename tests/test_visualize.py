"""Pictures that show what the second stage did: colours per outcome (kept, re-labelled, re-scored down,
dropped = dashed), labels inside the image and apart, drawing by the fused score, with supervision and with
the OpenCV fallback; --vis-score-thresh pictures left empty counted in summary.json."""
import json
import shutil
import sys

import cv2
import numpy as np
import pytest
import torch

from crop_classifier.structures import FusedDetections, ImageDetections
from crop_classifier.utils.drawing import (DROPPED, KEPT, RELABELLED, RESCORED_DOWN, STATUS_COLOURS, _Style,
                                           box_statuses, draw, place_labels, plan_boxes)
from data_paths import COCO128

NAMES = ["car", "truck", "person"]
H, W = 240, 320


@pytest.fixture(params=["supervision", "opencv"])
def drawer(request, monkeypatch):
    """``draw`` with supervision's annotators, and with supervision hidden (the OpenCV fallback)."""
    if request.param == "supervision":
        pytest.importorskip("supervision")
    else:
        monkeypatch.setitem(sys.modules, "supervision", None)  # ``import supervision`` raises ImportError
    return draw


def _fused(boxes, classes, scores, det_classes, det_scores, index):
    n = len(boxes)
    return FusedDetections(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), classes=torch.tensor(classes).long(),
        scores=torch.tensor(scores).float(), det_classes=torch.tensor(det_classes).long(),
        det_scores=torch.tensor(det_scores).float(), cls_probs=torch.zeros(n, len(NAMES)),
        cls_scores=torch.full((n,), float("nan")), classified=torch.ones(n, dtype=torch.bool),
        index=torch.tensor(index).long())


def _four_outcomes():
    """Four boxes on a black image, far apart: kept, re-labelled (car -> truck), re-scored down, dropped."""
    boxes = np.array([[20, 40, 120, 110], [180, 40, 290, 110], [20, 150, 120, 220], [180, 150, 290, 220]], np.float32)
    dets = ImageDetections(boxes, [0, 0, 2, 0], [0.9, 0.8, 0.9, 0.7])
    fused = _fused(boxes[:3], [0, 1, 2], [0.85, 0.81, 0.35], [0, 0, 2], [0.9, 0.8, 0.9], [0, 1, 2])
    return np.zeros((H, W, 3), np.uint8), dets, fused


def _is(pixel, status, tol=40):
    return np.abs(pixel.astype(int) - STATUS_COLOURS[status]).max() <= tol


def test_statuses_follow_what_the_second_stage_did():
    _, dets, fused = _four_outcomes()
    statuses, dropped = box_statuses(dets, fused, NAMES, NAMES)
    assert statuses == [KEPT, RELABELLED, RESCORED_DOWN] and dropped.tolist() == [3]
    p = plan_boxes(dets, fused, NAMES, NAMES, 0.3, track_ids=torch.tensor([7, 8, 9]))
    assert p.labels == ["#7 car 0.85", "#8 car -> truck 0.81", "#9 person 0.90 -> 0.35", "car 0.70 -> dropped"]
    assert p.statuses == [KEPT, RELABELLED, RESCORED_DOWN, DROPPED]


def test_box_colours_by_outcome_and_the_dropped_box_dashed(drawer):
    image, dets, fused = _four_outcomes()
    pic, n_drawn = drawer(image, dets, fused, NAMES, NAMES, 0.3)
    assert pic.dtype == np.uint8 and pic.shape[1] == W and pic.shape[0] > H  # a legend strip under the image
    assert n_drawn == 3
    # The bottom edges (labels sit at the top): solid in the status colour for the three kept boxes ...
    for (x1, _, x2, y2), status in zip(dets.boxes[:3].astype(int), [KEPT, RELABELLED, RESCORED_DOWN]):
        edge = pic[y2, x1 + 5:x2 - 5]
        assert all(_is(px, status) for px in edge), status
    # ... and dashed for the dropped one: grey dashes with the black image between them.
    x1, _, x2, y2 = dets.boxes[3].astype(int)
    edge = pic[y2, x1 + 5:x2 - 5]
    grey = np.array([_is(px, DROPPED) for px in edge])
    assert 0.3 < grey.mean() < 0.7 and (edge[~grey].max(axis=1) < 40).all()
    legend = pic[H:].reshape(-1, 3)
    for status in (KEPT, RELABELLED, RESCORED_DOWN, DROPPED):  # a swatch of every colour in the legend
        assert (np.abs(legend.astype(int) - STATUS_COLOURS[status]).max(axis=1) <= 10).sum() > 20


def test_boxes_are_drawn_by_the_fused_score(drawer):
    boxes = np.array([[20, 40, 120, 110], [180, 40, 290, 110]], np.float32)
    dets = ImageDetections(boxes, [0, 0], [0.95, 0.1])
    # The classifier pushed the first box down to 0.05 and raised the second to 0.6: only the second is drawn.
    fused = _fused(boxes, [0, 0], [0.05, 0.6], [0, 0], [0.95, 0.1], [0, 1])
    pic, n_drawn = drawer(np.zeros((H, W, 3), np.uint8), dets, fused, NAMES, NAMES, 0.3)
    assert n_drawn == 1
    assert pic[110, 50:90].max() == 0  # the demoted box is not drawn ("either score" would draw it)
    assert all(_is(px, KEPT) for px in pic[110, 200:270])
    empty, n = drawer(np.zeros((H, W, 3), np.uint8), dets, fused, NAMES, NAMES, 0.9)
    assert n == 0 and empty[:H].max() == 0  # the threshold left the picture empty: nothing drawn, n_drawn 0


def test_labels_stay_inside_the_image_and_apart(drawer):
    # A box at the top-left corner (its label cannot go above it) and, on the same spot, a re-labelled one:
    # supervision's own smart_position stacks these two labels on top of each other.
    boxes = np.array([[0, 0, 60, 50], [0, 0, 60, 50]], np.float32)
    dets = ImageDetections(boxes, [0, 0], [0.9, 0.9])
    fused = _fused(boxes, [0, 1], [0.9, 0.8], [0, 0], [0.9, 0.9], [0, 1])
    pic, _ = drawer(np.zeros((H, W, 3), np.uint8), dets, fused, NAMES, NAMES, 0.3)
    img = pic[:H].astype(int)
    style = _Style.for_image(W, H)
    spans = []
    for status, text in ((KEPT, "car 0.90"), (RELABELLED, "car -> truck 0.80")):
        filled = (np.abs(img - STATUS_COLOURS[status]).max(axis=2) <= 10).astype(np.uint8)
        # an opening removes the boxes' thin outlines and keeps the filled label backgrounds
        ys, xs = np.nonzero(cv2.morphologyEx(filled, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)))
        (tw, th) = style.text_size(text)
        # The whole label background is in the image: as wide and tall as its text plus padding.
        assert xs.max() - xs.min() + 1 >= tw + 2 * style.padding - 1, status
        assert ys.max() - ys.min() + 1 >= th + 2 * style.padding - 1, status
        spans.append((ys.min(), ys.max()))
    (a0, a1), (b0, b1) = spans
    assert a1 < b0 or b1 < a0  # one label above the other, neither covering the other


def test_fallback_label_layout_keeps_labels_inside_and_apart():
    boxes = np.array([[0, 0, 50, 50]] * 4 + [[300, 230, 320, 240]], np.float32)
    rects = place_labels(boxes, [(80, 12)] * 5, W, H, 3)
    for x1, y1, x2, y2 in rects:
        assert 0 <= x1 < x2 <= W and 0 <= y1 < y2 <= H
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), (a, b)


def test_a_real_picture_renders_with_every_outcome(drawer):
    path = COCO128 / "images" / "000000000009.jpg"
    if not path.is_file():
        pytest.skip("coco128 not present")
    image = cv2.imread(str(path))[:, :, ::-1]
    h, w = image.shape[:2]
    boxes = np.array([[1, 187, 612, 473], [311, 4, 631, 232], [249, 229, 565, 474], [0, 13, 434, 388]], np.float32)
    dets = ImageDetections(boxes, [0, 0, 2, 0], [0.9, 0.8, 0.9, 0.7])
    fused = _fused(boxes[:3], [0, 1, 2], [0.85, 0.81, 0.35], [0, 0, 2], [0.9, 0.8, 0.9], [0, 1, 2])
    before = image.copy()
    pic, n = drawer(image, dets, fused, NAMES, NAMES, 0.3)
    assert n == 3 and pic.shape[1] == w and pic.shape[0] > h
    assert np.array_equal(image, before)  # the caller's image (here a view of OpenCV's BGR buffer) is not drawn on
    assert not np.array_equal(pic[:h], image)  # the picture is


@pytest.mark.skipif(not (COCO128 / "annotations" / "instances_train2017.json").is_file(), reason="coco128 absent")
def test_infer_counts_pictures_the_threshold_left_empty(tmp_path, capsys):
    from crop_classifier.models import build_classifier, model_meta, save_checkpoint
    from tool_loader import load_tool

    ann = COCO128 / "annotations" / "instances_train2017.json"
    names = [c["name"] for c in sorted(json.loads(ann.read_text())["categories"], key=lambda c: c["id"])]
    torch.manual_seed(0)
    m = build_classifier("v3_79", len(names), width=0.0625, aux_logits=False)
    ckpt = save_checkpoint(tmp_path / "clf.pth", m, model_meta(m, "v3_79", names))
    images = tmp_path / "in"
    images.mkdir()
    for name in ("000000000009.jpg", "000000000025.jpg"):
        shutil.copy(COCO128 / "images" / name, images / name)
    infer = load_tool("infer")
    base = ["--detector", f"gt:{ann}", "--classifier-weights", str(ckpt), "--input", str(images), "--fusion",
            "rescore", "--no-progress", "--device", "cpu"]
    # rescore: score = 1.0 x an untrained classifier's probability (~1/80), so 0.99 leaves both pictures empty
    assert infer.main(base + ["--output", str(tmp_path / "a"), "--vis-score-thresh", "0.99"]) == 0
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["vis_empty"] == 2 and s["vis_score_thresh"] == 0.99
    assert "2 picture(s) empty at --vis-score-thresh 0.99" in capsys.readouterr().out
    assert infer.main(base + ["--output", str(tmp_path / "b"), "--vis-score-thresh", "0"]) == 0
    assert json.loads((tmp_path / "b" / "summary.json").read_text())["vis_empty"] == 0
    assert "empty at --vis-score-thresh" not in capsys.readouterr().out
