"""Pictures that show what the second stage did to each first-stage box.

Every box is drawn in the colour of its outcome (``STATUS_COLOURS``):

* **kept**: the detector's class, score not pushed down;
* **re-labelled**: the class changed (label ``detector class -> final class score``);
* **re-scored down**: the detector's class, but the fused score is under ``RESCORED_DOWN_RATIO`` (0.5) x the
  detector's score (label ``class detector score -> fused score``);
* **dropped**: a first-stage box the second stage removed (fusion ``filter``, NMS, background, the tracker's
  ``--track-min-score``): a thin dashed box, label ``class score -> dropped``.

Boxes are drawn by their **fused** score (``score >= score_thresh``); a dropped box by its detector score. A
legend strip under the picture names the colours and counts what was drawn. Drawn with supervision's
``BoxAnnotator``/``LabelAnnotator`` (labels placed by ``place_labels``: inside the image, apart) when
supervision is installed (extra ``video``), else with OpenCV and the same layout. Video frames add the
track id in front of the label (``#7 car -> truck 0.81``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

KEPT, RELABELLED, RESCORED_DOWN, DROPPED = "kept", "re-labelled", "re-scored down", "dropped"
STATUSES = (KEPT, RELABELLED, RESCORED_DOWN, DROPPED)
#: RGB; the Okabe-Ito colours, told apart with the common colour-vision deficiencies.
STATUS_COLOURS = {KEPT: (0, 114, 178), RELABELLED: (230, 159, 0), RESCORED_DOWN: (204, 121, 167),
                  DROPPED: (200, 200, 200)}
_TEXT_COLOURS = {KEPT: (255, 255, 255), RELABELLED: (0, 0, 0), RESCORED_DOWN: (0, 0, 0), DROPPED: (0, 0, 0)}
#: A box of the detector's class counts as re-scored down when its fused score is under this x its detector score.
RESCORED_DOWN_RATIO = 0.5
_LEGEND_BG = (32, 32, 32)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class BoxPlan:
    """What a picture shows: ``boxes`` [M, 4] XYXY, a label and a status (one of ``STATUSES``) per box, and
    the counts the legend reports (``drawn``: fused boxes at ``score >= thresh``; ``under``: fused boxes below
    it; ``dropped``: dropped boxes shown)."""

    boxes: np.ndarray
    labels: List[str]
    statuses: List[str]
    drawn: int
    under: int
    dropped: int


def box_statuses(detections, fused, output_class_names: Sequence[str],
                 detector_class_names: Sequence[str]) -> Tuple[List[str], np.ndarray]:
    """What the second stage did to each box.

    Args:
        detections: the first stage's ``ImageDetections`` (or ``None``: nothing known to be dropped).
        fused: the ``FusedDetections`` made from it; ``fused.index`` maps each kept box to its position in
            ``detections``.
        output_class_names / detector_class_names: the names of ``fused.classes`` / ``fused.det_classes``.

    Returns:
        (a status per fused box: ``kept``, ``re-labelled`` or ``re-scored down``; ``[D]`` int64 positions in
        ``detections`` of the boxes no fused box came from, i.e. the dropped ones).
    """
    classes, det_classes = _np(fused.classes).astype(int), _np(fused.det_classes).astype(int)
    scores, det_scores = _np(fused.scores), _np(fused.det_scores)
    statuses = []
    for c, d, s, ds in zip(classes, det_classes, scores, det_scores):
        if output_class_names[c] != detector_class_names[d]:
            statuses.append(RELABELLED)
        elif s < RESCORED_DOWN_RATIO * ds:
            statuses.append(RESCORED_DOWN)
        else:
            statuses.append(KEPT)
    n = 0 if detections is None else len(detections)
    dropped = np.setdiff1d(np.arange(n), _np(fused.index).astype(np.int64)).astype(np.int64)
    return statuses, dropped


def plan_boxes(detections, fused, output_class_names: Sequence[str], detector_class_names: Sequence[str],
               score_thresh: float, track_ids=None, label_suffixes: Optional[Sequence[str]] = None) -> BoxPlan:
    """The boxes a picture shows, their labels and statuses (see the module doc; arguments as ``draw``)."""
    statuses, dropped = box_statuses(detections, fused, output_class_names, detector_class_names)
    boxes, scores, det_scores = _np(fused.boxes).reshape(-1, 4), _np(fused.scores), _np(fused.det_scores)
    ids = None if track_ids is None else _np(track_ids).astype(int)
    shown = [i for i in range(len(statuses)) if scores[i] >= score_thresh]
    labels = []
    for i in shown:
        det = detector_class_names[int(_np(fused.det_classes)[i])]
        out = output_class_names[int(_np(fused.classes)[i])]
        text = {RELABELLED: f"{det} -> {out} {scores[i]:.2f}",
                RESCORED_DOWN: f"{out} {det_scores[i]:.2f} -> {scores[i]:.2f}"}.get(statuses[i], f"{out} {scores[i]:.2f}")
        prefix = f"#{ids[i]} " if ids is not None else ""
        labels.append(prefix + text + (label_suffixes[i] if label_suffixes is not None else ""))
    gone = [int(k) for k in dropped if float(detections.scores[k]) >= score_thresh]
    labels += [f"{detector_class_names[int(detections.classes[k])]} {float(detections.scores[k]):.2f} -> dropped"
               for k in gone]
    all_boxes = np.concatenate([boxes[shown], np.asarray(detections.boxes, np.float32)[gone].reshape(-1, 4)]) \
        if gone else boxes[shown]
    return BoxPlan(all_boxes.astype(np.float32).reshape(-1, 4), labels,
                   [statuses[i] for i in shown] + [DROPPED] * len(gone),
                   drawn=len(shown), under=len(statuses) - len(shown), dropped=len(gone))


def draw(image, detections, fused, output_class_names: Sequence[str], detector_class_names: Sequence[str],
         score_thresh: float = 0.3, track_ids=None, label_suffixes: Optional[Sequence[str]] = None):
    """A picture of what the second stage did (see the module doc).

    Args:
        image: HxWx3 uint8 RGB.
        detections: the first stage's ``ImageDetections`` of this image (``None``: no dropped boxes shown).
        fused: the second stage's ``FusedDetections`` (``index`` into ``detections``).
        output_class_names / detector_class_names: names of ``fused.classes`` / of the detector's classes.
        score_thresh: fused boxes are drawn at ``fused score >= score_thresh``; dropped ones at detector score
            ``>= score_thresh``.
        track_ids: ``[N]`` track id per fused box (video): labels start with ``#ID``.
        label_suffixes: ``[N]`` text appended to each fused box's label (video: `` *`` = classified now).

    Returns:
        (picture ``(H + legend)xWx3`` uint8 RGB: the image with boxes and labels, a legend strip below it;
        ``n_drawn``: fused boxes drawn, 0 when the threshold left the picture empty of results).
    """
    p = plan_boxes(detections, fused, output_class_names, detector_class_names, score_thresh, track_ids,
                   label_suffixes)
    bgr = np.asarray(image, dtype=np.uint8)[:, :, ::-1].copy()  # a copy: the caller's image stays as it is
    style = _Style.for_image(bgr.shape[1], bgr.shape[0])
    try:
        import supervision as sv
    except ImportError:
        sv = None
    if sv is not None:
        _annotate_supervision(sv, bgr, p, style)
    else:
        _annotate_opencv(bgr, p, style)
    legend = _legend(bgr.shape[1], p, score_thresh, style)
    return np.ascontiguousarray(np.concatenate([bgr, legend])[:, :, ::-1]), p.drawn


# ------------------------------------------------------------------------------------------------ drawing
@dataclass(frozen=True)
class _Style:
    thickness: int
    text_scale: float
    padding: int

    @classmethod
    def for_image(cls, w: int, h: int) -> "_Style":
        side = min(w, h)
        return cls(thickness=max(1, int(round(side / 320))), text_scale=float(np.clip(side / 1000, 0.35, 1.0)),
                   padding=max(2, int(round(side / 200))))

    def text_size(self, text: str) -> Tuple[int, int]:
        """(w, h) of ``text`` above its baseline, as supervision's ``LabelAnnotator`` measures it."""
        return cv2.getTextSize(text, _FONT, self.text_scale, 1)[0]


def _bgr(status: str) -> Tuple[int, int, int]:
    return tuple(reversed(STATUS_COLOURS[status]))


def _label_rects(bgr: np.ndarray, p: BoxPlan, style: _Style) -> List[Tuple[int, int, int, int]]:
    # Our own layout for both drawings: supervision's ``smart_position`` spreads labels apart, then snaps them
    # back inside the frame, which stacks labels of boxes at the image's edge on top of each other.
    return place_labels(p.boxes, [style.text_size(t) for t in p.labels], bgr.shape[1], bgr.shape[0], style.padding)


def _annotate_supervision(sv, bgr: np.ndarray, p: BoxPlan, style: _Style) -> None:
    palette = sv.ColorPalette([sv.Color(*STATUS_COLOURS[s]) for s in STATUSES])
    text_palette = sv.ColorPalette([sv.Color(*_TEXT_COLOURS[s]) for s in STATUSES])
    class_id = np.array([STATUSES.index(s) for s in p.statuses], dtype=int)
    dashed = class_id == STATUSES.index(DROPPED)
    for b in p.boxes[dashed]:
        _dashed_rectangle(bgr, b, _bgr(DROPPED), max(1, style.thickness // 2))
    if (~dashed).any():
        solid = sv.Detections(xyxy=p.boxes[~dashed], class_id=class_id[~dashed])
        sv.BoxAnnotator(color=palette, thickness=style.thickness, color_lookup=sv.ColorLookup.CLASS).annotate(bgr, solid)
    if len(p.boxes):
        # Each label's rectangle from the layout: a TOP_LEFT label sits on its anchor, so a 1-px box at the
        # rectangle's bottom-left corner puts it exactly there.
        rects = np.array(_label_rects(bgr, p, style), dtype=np.float32).reshape(-1, 4)
        anchors = np.stack([rects[:, 0], rects[:, 3], rects[:, 0] + 1, rects[:, 3] + 1], axis=1)
        labels = sv.LabelAnnotator(color=palette, text_color=text_palette, text_scale=style.text_scale,
                                   text_padding=style.padding, text_position=sv.Position.TOP_LEFT,
                                   color_lookup=sv.ColorLookup.CLASS)
        labels.annotate(bgr, sv.Detections(xyxy=anchors, class_id=class_id), labels=p.labels)


def _annotate_opencv(bgr: np.ndarray, p: BoxPlan, style: _Style) -> None:
    for b, s in zip(p.boxes, p.statuses):
        if s == DROPPED:
            _dashed_rectangle(bgr, b, _bgr(s), max(1, style.thickness // 2))
    for b, s in zip(p.boxes, p.statuses):
        if s != DROPPED:
            x1, y1, x2, y2 = (int(v) for v in b)
            cv2.rectangle(bgr, (x1, y1), (x2, y2), _bgr(s), style.thickness)
    for (x1, y1, x2, y2), text, s in zip(_label_rects(bgr, p, style), p.labels, p.statuses):
        cv2.rectangle(bgr, (x1, y1), (x2 - 1, y2 - 1), _bgr(s), -1)
        cv2.putText(bgr, text, (x1 + style.padding, y1 + style.padding + style.text_size(text)[1]), _FONT,
                    style.text_scale, tuple(reversed(_TEXT_COLOURS[s])), 1, cv2.LINE_AA)


def place_labels(boxes: np.ndarray, sizes: Sequence[Tuple[int, int]], width: int, height: int,
                 padding: int) -> List[Tuple[int, int, int, int]]:
    """Label rectangles for the OpenCV drawing: above each box's top-left corner (inside the box's top when
    there is no room above), inside the image, at the nearest height where it overlaps no label placed
    before it (supervision's ``smart_position`` spreads them when supervision is installed).

    Args:
        boxes: ``[M, 4]`` XYXY. sizes: text (w, h) per box. width/height: the image's. padding: around the text.

    Returns:
        ``[M]`` (x1, y1, x2, y2) integer rectangles inside the image (overlapping only where no free height
        is left in the label's column).
    """
    placed: List[Tuple[int, int, int, int]] = []
    for b, (tw, th) in zip(np.asarray(boxes).reshape(-1, 4), sizes):
        w, h = min(tw + 2 * padding, width), min(th + 2 * padding, height)
        x = int(np.clip(b[0], 0, width - w))
        y0 = int(b[1]) - h if int(b[1]) - h >= 0 else int(np.clip(b[1], 0, height - h))
        column = [r for r in placed if x < r[2] and r[0] < x + w]
        candidates = [y0] + [r[3] for r in column] + [r[1] - h for r in column]
        free = [y for y in candidates if 0 <= y <= height - h
                and not any(y < r[3] and r[1] < y + h for r in column)]
        y = min(free, key=lambda v: abs(v - y0)) if free else y0
        placed.append((x, y, x + w, y + h))
    return placed


def _dashed_rectangle(img: np.ndarray, box, colour, thickness: int, dash: int = 6) -> None:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    for (ax, ay), (bx, by) in (((x1, y1), (x2, y1)), ((x2, y1), (x2, y2)), ((x2, y2), (x1, y2)), ((x1, y2), (x1, y1))):
        length = max(abs(bx - ax), abs(by - ay))
        for start in range(0, length, 2 * dash):
            end = min(start + dash, length)
            t0, t1 = start / max(length, 1), end / max(length, 1)
            cv2.line(img, (int(ax + (bx - ax) * t0), int(ay + (by - ay) * t0)),
                     (int(ax + (bx - ax) * t1), int(ay + (by - ay) * t1)), colour, thickness)


def _legend(width: int, p: BoxPlan, score_thresh: float, style: _Style) -> np.ndarray:
    """The strip under the picture: a swatch and name per status, then what was drawn (BGR)."""
    items = [(KEPT, KEPT), (RELABELLED, RELABELLED),
             (RESCORED_DOWN, f"re-scored down (< {RESCORED_DOWN_RATIO:g} x detector)"), (DROPPED, "dropped (dashed)"),
             (None, f"score >= {score_thresh:.2f}: {p.drawn} drawn, {p.under} under, {p.dropped} dropped shown")]
    (_, text_h), descent = cv2.getTextSize("Tg", _FONT, style.text_scale, 1)
    line_h = text_h + descent + 2 * style.padding
    swatch = text_h + descent
    # Laid out with the widest counts, so every frame of a video gets the same strip (one frame size).
    widest = f"score >= {score_thresh:.2f}: 9999 drawn, 9999 under, 9999 dropped shown"
    x, rows, layout = style.padding, 0, []
    for status, text in items:
        text_w = style.text_size(text if status else widest)[0]
        w = (swatch + style.padding if status else 0) + text_w + 3 * style.padding
        if x + w > width and x > style.padding:
            x, rows = style.padding, rows + 1
        layout.append((x, rows, status, text))
        x += w
    strip = np.full(((rows + 1) * line_h, width, 3), _LEGEND_BG, dtype=np.uint8)
    for x, row, status, text in layout:
        top = row * line_h + style.padding
        if status:
            cv2.rectangle(strip, (x, top), (x + swatch, top + swatch), _bgr(status), -1)
            x += swatch + style.padding
        baseline = cv2.getTextSize(text, _FONT, style.text_scale, 1)[1]
        cv2.putText(strip, text, (x, top + swatch - baseline // 2), _FONT, style.text_scale, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return strip


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


__all__ = ["BoxPlan", "DROPPED", "KEPT", "RELABELLED", "RESCORED_DOWN", "RESCORED_DOWN_RATIO", "STATUSES",
           "STATUS_COLOURS", "box_statuses", "draw", "place_labels", "plan_boxes"]
