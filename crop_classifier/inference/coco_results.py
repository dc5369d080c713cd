"""COCO results and COCO box mAP (pycocotools) for the detector alone and for the two-stage output."""
from __future__ import annotations

import contextlib
import io
import logging
import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..coco_io import coco_bbox

logger = logging.getLogger(__name__)

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: The score from which true/false positives are counted (``matches``).
MATCH_SCORE = 0.05  # Detectron2's default SCORE_THRESH_TEST: what a first stage outputs
#: ``background_ceiling``: a box overlapping no ground-truth object at this IoU is "not an object".
BACKGROUND_IOU = 0.5


def assign_category_ids(names: Sequence[str], reference: Optional[Sequence[Mapping[str, Any]]] = None) -> Dict[str, int]:
    """Output category ids, by name: a reference file's ids where it has the name (so results line up with its
    annotations), new ids above its largest for names it lacks; without a reference, position + 1."""
    if not reference:
        return {n: i + 1 for i, n in enumerate(names)}
    by_name = {str(c["name"]): int(c["id"]) for c in reference}
    next_id = max(by_name.values(), default=0) + 1
    out = {}
    for n in names:
        if n in by_name:
            out[n] = by_name[n]
        else:
            out[n] = next_id
            next_id += 1
    return out


def _num(x: float) -> Optional[float]:
    return None if x is None or not math.isfinite(float(x)) else round(float(x), 5)


def fused_results(image_id: int, file_name: str, fused, output_names: Sequence[str], out_ids: Mapping[str, int],
                  detector_names: Sequence[str], det_ids: Mapping[str, int], changed: np.ndarray) -> List[dict]:
    """COCO results of one image's two-stage output, with the detector's own class/score and the classifier's."""
    out = []
    for i in range(len(fused)):
        name = output_names[int(fused.classes[i])]
        det_name = detector_names[int(fused.det_classes[i])]
        out.append({
            "image_id": int(image_id),
            "file_name": file_name,
            "category_id": out_ids[name],
            "category_name": name,
            "bbox": coco_bbox(fused.boxes[i].tolist()),
            "score": _num(fused.scores[i]),
            "det_category_id": det_ids[det_name],
            "det_category_name": det_name,
            "det_score": _num(fused.det_scores[i]),
            "cls_score": _num(fused.cls_scores[i]),
            "reclassified": bool(fused.classified[i]),
            "changed": bool(changed[i]),
        })
    return out


def detector_results(image_id: int, file_name: str, dets, detector_names: Sequence[str], det_ids: Mapping[str, int]) -> List[dict]:
    return [{
        "image_id": int(image_id),
        "file_name": file_name,
        "category_id": det_ids[detector_names[int(c)]],
        "category_name": detector_names[int(c)],
        "bbox": coco_bbox(b),
        "score": _num(s),
    } for b, c, s in zip(dets.boxes.tolist(), dets.classes.tolist(), dets.scores.tolist())]


def _matches(ev, score: float) -> Dict[str, Any]:
    """True and false positives among the detections scoring >= ``score``, at IoU 0.5 over all areas, from the
    matching COCOeval already did (``evalImgs``), and the ground truth boxes none of them found."""
    tp = fp = n_gt = 0
    all_areas = ev.params.areaRng[0]
    for e in ev.evalImgs:
        if e is None or e["aRng"] != all_areas:
            continue
        keep = (np.asarray(e["dtScores"]) >= score) & ~np.asarray(e["dtIgnore"][0], dtype=bool)
        matched = np.asarray(e["dtMatches"][0]) > 0
        tp += int((keep & matched).sum())
        fp += int((keep & ~matched).sum())
        n_gt += int((~np.asarray(e["gtIgnore"], dtype=bool)).sum())
    return {"score": score, "iou": 0.5, "tp": tp, "fp": fp, "fn": n_gt - tp}


def coco_box_map(gt, results: Sequence[dict], img_ids: Sequence[int]) -> Dict[str, Any]:
    """COCO box AP of ``results`` on ``img_ids`` (pycocotools), with per-category AP by name and the true/false
    positives at score ``MATCH_SCORE`` (``matches``: what a second stage removed or lost, next to the detector's).

    Results whose category the annotations lack are dropped (counted in ``dropped``).
    """
    from pycocotools.cocoeval import COCOeval

    cat_ids = set(gt.getCatIds())
    kept = [dict(r) for r in results if r["category_id"] in cat_ids]
    summary: Dict[str, Any] = {"images": len(img_ids), "detections": len(kept), "dropped": len(results) - len(kept)}
    if not kept or not img_ids:
        summary.update({k: 0.0 for k in STAT_NAMES})
        summary["per_category_AP"] = {}
        return summary
    for r in kept:
        r.pop("segmentation", None)
    with contextlib.redirect_stdout(io.StringIO()):
        dt = gt.loadRes(kept)
        ev = COCOeval(gt, dt, "bbox")
        ev.params.imgIds = list(img_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    summary.update({k: round(float(v), 5) for k, v in zip(STAT_NAMES, ev.stats[:6])})
    summary["matches"] = _matches(ev, MATCH_SCORE)
    per_cat = {}
    precision = ev.eval["precision"]  # [T, R, K, A, M]
    for k, cid in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        if p.size:
            per_cat[gt.cats[cid]["name"]] = round(float(np.mean(p)), 5)
    summary["per_category_AP"] = per_cat
    return summary


def background_ceiling(gt, results: Sequence[dict], img_ids: Sequence[int], iou: float = BACKGROUND_IOU) -> Dict[str, Any]:
    """What a perfect background class could reach: the AP of ``results`` once every box that overlaps no
    ground-truth object of any class at IoU >= ``iou`` is removed (and nothing else changes), with how many
    were removed. Its distance to the results' own AP bounds what rejecting "not an object" can add; the
    rest of the gap to 1 is wrong classes, localisation and misses."""
    from pycocotools import mask as mask_utils

    by_image: Dict[int, List[dict]] = {}
    for r in results:
        by_image.setdefault(int(r["image_id"]), []).append(r)
    kept: List[dict] = []
    for image_id, rs in by_image.items():
        anns = [a for a in gt.loadAnns(gt.getAnnIds(imgIds=[image_id], iscrowd=None)) if not a.get("iscrowd", 0)]
        if not anns:
            continue
        ious = mask_utils.iou([r["bbox"] for r in rs], [a["bbox"] for a in anns], [0] * len(anns))
        kept.extend(r for r, best in zip(rs, np.asarray(ious).max(axis=1)) if best >= iou)
    ceiling = coco_box_map(gt, kept, img_ids)
    return {"iou": iou, "removed": len(results) - len(kept),
            **{k: ceiling[k] for k in ("AP", "AP50", "APs", "APm", "APl")}}
