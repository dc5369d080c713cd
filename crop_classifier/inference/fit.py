"""``tools/fit_fusion.py``: fit how much to trust the first stage and the classifier on a validation split.

The first stage and the classifier run once on the split (``collect``); every candidate rule is then only a
fusion of the stored answers, scored by the split's COCO box AP (pycocotools, ``coco_results.coco_box_map``):

1. detector alone (``alpha = 0``) and the configured fusion, as references;
2. one shared ``alpha`` for every class (a grid);
3. per class: the grid value with the best AP of that class (per-category AP of the same evaluations), shrunk
   towards the shared value by its box count;
4. with class sets of more than one class: a re-label margin (a grid) on top of the best of 2-3.

Candidates are taken simplest first (detector alone, shared, per class, margins), and one replaces the rule
chosen so far only when it adds more than ``MIN_GAIN`` AP on the split: the detector alone is chosen unless
trusting the classifier clearly pays, so the fitted fusion never scores below the first stage alone on its
split, and gains within a small split's noise do not make it worse on new images (docs/benchmarks.md: on 15
coco128 images "per class" added 0.0024 on the split and lost 0.016 on the next 16). See
``second_stage.fitted`` for the rule.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..coco_io import load_coco
from ..second_stage import SecondStage
from ..second_stage.fitted import FittedFusion, probe_answers, shrink
from ..second_stage.fusion import FusionRule, fuse_image
from ..structures import ImageDetections, ImageRecord
from .coco_results import assign_category_ids, coco_box_map, fused_results
from .inputs import BadInput, expand_inputs, iter_records

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
MARGINS = (0.5, 0.3, 0.15, 0.0)
SHRINK_PRIOR = 20.0  # boxes: a class with this many counts half its own value, half the shared one
# AP a more complex rule must add over the simpler one chosen so far: the tolerance the fitted fusion is held
# to against the first stage (never more than 0.005 below it on new images).
MIN_GAIN = 0.005


@dataclass
class Answers:
    """One validation image's first-stage boxes and the classifier's probabilities for them."""

    image_id: int
    file_name: str
    dets: ImageDetections
    gated_scores: torch.Tensor  # [N] detector scores, size-gated boxes calibrated (SecondStage.gated_scores)
    probs: torch.Tensor  # [N, K] (zeros where not classified)
    classified: torch.Tensor  # [N] bool


def collect(first: Any, second: SecondStage, records: Sequence[ImageRecord], batch_size: int = 4,
            progress: bool = False) -> List[Answers]:
    """Runs both stages once on ``records`` (each with its ``image_id`` set).

    Returns:
        One ``Answers`` per record, in order.
    """
    from tqdm import tqdm

    out: List[Answers] = []
    bar = tqdm(total=len(records), desc="fit", unit="img", disable=not progress)
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        dets = first.detect(batch)
        images = [torch.from_numpy(r.image).permute(2, 0, 1) for r in batch]
        boxes = [torch.from_numpy(d.boxes) for d in dets]
        classes = [torch.from_numpy(d.classes) for d in dets]
        elig = [second.eligible(b, c, im.shape[-2:]).cpu() for im, b, c in zip(images, boxes, classes)]
        probs_e = second.classify(images, [b[e] for b, e in zip(boxes, elig)])
        for r, d, b, c, e, pe in zip(batch, dets, boxes, classes, elig, probs_e):
            probs = torch.zeros(len(d), second.class_map.num_probs)
            probs[e] = pe.float().cpu()
            gated = second.gated_scores(b.float(), c.long(), torch.from_numpy(d.scores))
            out.append(Answers(int(r.image_id), r.file_name, d, gated.cpu(), probs, e))
        bar.update(len(batch))
    bar.close()
    return out


class Evaluator:
    """Fuses the stored answers with a rule and scores it on the split (COCO box AP, pycocotools)."""

    def __init__(self, second: SecondStage, answers: List[Answers], gt: Any, ref_cats: Any, first_names: Sequence[str]):
        self.second, self.answers, self.gt = second, answers, gt
        self.out_ids = assign_category_ids(second.output_class_names, ref_cats)
        self.det_ids = assign_category_ids(first_names, ref_cats)
        self.first_names = list(first_names)
        self.img_ids = [a.image_id for a in answers]

    def score(self, rule: FusionRule) -> Dict[str, Any]:
        """``coco_box_map`` of the split fused with ``rule``."""
        results = []
        for a in self.answers:
            scores = a.gated_scores if rule.fitted is None else torch.from_numpy(a.dets.scores)  # as SecondStage.fuse
            f = fuse_image(torch.from_numpy(a.dets.boxes), torch.from_numpy(a.dets.classes), scores,
                           a.probs, a.classified, self.second.class_map, rule)
            f.det_scores = torch.from_numpy(a.dets.scores)[f.index]
            results += fused_results(a.image_id, a.file_name, f, self.second.output_class_names, self.out_ids,
                                     self.first_names, self.det_ids, self.second.changed(f).numpy())
        return coco_box_map(self.gt, results, self.img_ids)

    def fitted(self, alpha: Dict[str, float], shared: float, margin: float = math.inf) -> FusionRule:
        r = self.second.rule
        return FusionRule("replace", r.nms_thresh, r.background_drop, FittedFusion(alpha, shared, margin))


def _box_counts(answers: Sequence[Answers], names: Sequence[str]) -> Dict[str, int]:
    counts = {n: 0 for n in names}
    for a in answers:
        for c, e in zip(a.dets.classes.tolist(), a.classified.tolist()):
            if e:
                counts[names[c]] += 1
    return counts


def fit(ev: Evaluator) -> Tuple[FittedFusion, Dict[str, Any]]:
    """The best rule on the split (see module doc) and the AP of every candidate.

    Returns:
        ``(FittedFusion without its fitted_for, {"detector_only", "default_fusion", "candidates", "fitted"})``.
    """
    names = ev.second.class_map.detector_classes
    none = {n: 0.0 for n in names}
    detector = ev.score(ev.fitted(none, 0.0))
    default = ev.score(ev.second.rule)
    grid = {a: (detector if a == 0 else ev.score(ev.fitted({n: a for n in names}, a))) for a in ALPHAS}
    shared = max(ALPHAS, key=lambda a: (grid[a]["AP"], -a))
    out_names = ev.second.output_class_names
    det_to_out = ev.second.class_map.det_to_out.tolist()
    best = {}
    for d, n in enumerate(names):
        cat = out_names[det_to_out[d]]
        per = [(grid[a]["per_category_AP"].get(cat), a) for a in ALPHAS]
        per = [(ap, a) for ap, a in per if ap is not None]
        best[n] = max(per, key=lambda t: (t[0], -t[1]))[1] if per else shared
    per_class = shrink(best, _box_counts(ev.answers, names), shared, SHRINK_PRIOR)
    candidates: List[Tuple[str, FittedFusion, Dict[str, Any]]] = [
        ("detector alone", FittedFusion(none, 0.0), detector),
        (f"shared alpha {shared:g}", FittedFusion({n: shared for n in names}, shared), grid[shared]),
    ]
    candidates.append(("per class", FittedFusion(per_class, shared),
                       ev.score(ev.fitted(per_class, shared))))
    if bool((ev.second.class_map.sets.sum(dim=1) > 1).any()):  # a class can change: fit the re-label margin
        base_name, base, _ = choose(candidates)
        for m in MARGINS:
            candidates.append((f"{base_name} + margin {m:g}",
                               FittedFusion(dict(base.alpha), base.shared_alpha, m),
                               ev.score(ev.fitted(base.alpha, base.shared_alpha, m))))
    name, chosen, score = choose(candidates)
    report = {"detector_only": _ap(detector), "default_fusion": {"rule": ev.second.fusion, **_ap(default)},
              "candidates": [{"rule": n, **_ap(s)} for n, _, s in candidates], "fitted": {"rule": name, **_ap(score)},
              "min_gain": MIN_GAIN, "images": len(ev.img_ids)}
    return chosen, report


def choose(candidates: Sequence[Tuple[str, Any, Dict[str, Any]]]) -> Tuple[str, Any, Dict[str, Any]]:
    """The rule chosen among ``(name, rule, score)`` candidates, simplest first: each later one replaces the
    choice so far only when its ``score["AP"]`` is more than ``MIN_GAIN`` above it.

    Returns:
        The chosen ``(name, rule, score)``.
    """
    chosen = candidates[0]
    for c in candidates[1:]:
        if c[2]["AP"] > chosen[2]["AP"] + MIN_GAIN:
            chosen = c
    return chosen


def _ap(s: Dict[str, Any]) -> Dict[str, float]:
    return {k: s[k] for k in ("AP", "AP50", "AP75")}


def split_records(inputs: Sequence[str], annotations: str,
                  video_stride: int = 1) -> Tuple[List[ImageRecord], List[BadInput], int]:
    """The validation images (those the annotations know), with their COCO ids.

    Returns:
        ``(records, unreadable inputs, how many readable inputs the annotations do not know: skipped)``.
    """
    ann = load_coco(annotations)
    files, bad = expand_inputs(list(inputs))
    records, skipped = [], 0
    for r in iter_records(files, bad, video_stride=video_stride):
        if r.key not in ann.images_by_key:  # another split's image: the inputs may be a whole folder
            skipped += 1
            continue
        r.image_id = int(ann.images_by_key[r.key]["id"])
        records.append(r)
    return records, bad, skipped


def fitted_for(second: SecondStage, detector: str, classifier_weights: str) -> Dict[str, Any]:
    """What the file is for: the classifier (file and its answers on the probe crops) and the first stage."""
    return {"classifier": str(classifier_weights), "classifier_probe": probe_answers(second.classifier),
            "first_stage": detector, "detector_classes": list(second.class_map.detector_classes),
            "class_map": second.class_map.describe()}


__all__ = ["Answers", "Evaluator", "collect", "fit", "fitted_for", "split_records", "ALPHAS", "MARGINS"]
