"""Pictures with both labels per box: the two-stage class and score, and what the detector said."""
from __future__ import annotations

from typing import List, Sequence

import cv2
import numpy as np


def box_labels(fused, output_names: Sequence[str], detector_names: Sequence[str]) -> List[str]:
    labels = []
    for i in range(len(fused)):
        name = output_names[int(fused.classes[i])]
        det = detector_names[int(fused.det_classes[i])]
        text = f"{name} {float(fused.scores[i]):.2f}"
        if bool(fused.classified[i]):
            text += f" | det {det} {float(fused.det_scores[i]):.2f}"
        labels.append(text)
    return labels


def draw(image_rgb: np.ndarray, fused, output_names: Sequence[str], detector_names: Sequence[str],
         changed: np.ndarray, score_thresh: float = 0.3) -> np.ndarray:
    """RGB picture; Detectron2's Visualizer when installed, else plain OpenCV. Changed boxes are drawn in red.

    A box is drawn when either its fused or its detector score reaches ``score_thresh``, so boxes the
    classifier demoted stay visible."""
    keep = ((fused.scores >= score_thresh) | (fused.det_scores >= score_thresh)).cpu().numpy()
    boxes = fused.boxes.cpu().numpy()[keep]
    labels = [t for t, k in zip(box_labels(fused, output_names, detector_names), keep) if k]
    changed = np.asarray(changed)[keep]
    colors = [(0.9, 0.1, 0.1) if c else (0.1, 0.6, 0.9) for c in changed]
    try:
        from detectron2.utils.visualizer import Visualizer
    except ImportError:
        Visualizer = None
    if Visualizer is not None:
        v = Visualizer(image_rgb, None)
        return v.overlay_instances(boxes=boxes, labels=labels, assigned_colors=colors).get_image()
    out = image_rgb.copy()
    for b, t, c in zip(boxes.astype(int), labels, colors):
        col = tuple(int(255 * v) for v in c)
        cv2.rectangle(out, (b[0], b[1]), (b[2], b[3]), col, 2)
        cv2.putText(out, t, (b[0], max(b[1] - 3, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.4, col, 1, cv2.LINE_AA)
    return out
