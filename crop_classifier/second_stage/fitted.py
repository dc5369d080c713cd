"""A fitted fusion: how much to trust the detector and the classifier, per class, fitted on a validation split.

For a box of detector class ``d`` (score ``s``) with classifier probabilities ``p`` over its class set
``S = map[d]`` (``class_map``), the fitted rule is

- score: ``s * q ** alpha[d]``, where ``q = sum_{k in S} p_k`` (the classifier's probability of ``d``, as
  ``rescore`` reads it) or, for a re-labelled box, ``p_k*``. ``alpha = 0`` is the detector alone, ``alpha = 1``
  is ``rescore``; values between trust the classifier partly. Each class's ``alpha`` is shrunk towards the
  shared value by its box count (``n / (n + prior)``), so a class with few validation boxes stays near it.
- class: the classifier's best class ``k*`` in ``S`` replaces ``d`` only when it wins by ``margin`` over the
  probability of the detector's own class (0 when the classifier does not have it); ``margin = inf`` never
  re-labels.

``tools/fit_fusion.py`` picks the values that maximise the validation split's COCO AP (pycocotools), with
"trust the detector alone" always a candidate, and writes them with what they were fitted for: the classifier's
answers on fixed probe crops (``probe``), the first stage and its classes, and the split's AP of the detector
alone, the default fusion and the fitted one. ``FittedFusion.check`` refuses the file for another classifier.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from ..errors import CheckpointError
from ..utils.io import atomic_save_json
from .class_map import ClassMap

FORMAT = "crop_classifier.fitted_fusion/1"
PROBE_CROPS = 6
PROBE_TOLERANCE = 0.1  # max |probability difference| on the probe crops: bf16/int8 forms of one classifier pass


def probe_crops(size: int) -> Tensor:
    """``[PROBE_CROPS, 3, size, size]`` fixed crops in [0, 1] (seeded noise and gradients): the same on every
    machine, so a classifier's answers on them identify it across runtimes."""
    g = torch.Generator().manual_seed(12345)
    noise = torch.rand(PROBE_CROPS // 2, 3, size, size, generator=g)
    ramp = torch.linspace(0, 1, size)
    grads = torch.stack([torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size),
                                      (ramp[None, :] * ramp[:, None])])[torch.randperm(3, generator=g)]
                         for _ in range(PROBE_CROPS - PROBE_CROPS // 2)])
    return torch.cat([noise, grads]).float()


def probe_answers(classifier: Any) -> List[List[float]]:
    """The classifier's probabilities on ``probe_crops`` (its own input size), rounded for the file."""
    with torch.no_grad():
        probs = classifier(probe_crops(int(classifier.meta.input_size)).to(classifier.device))
    return [[round(float(v), 5) for v in row] for row in probs.float().cpu()]


@dataclass
class FittedFusion:
    """The fitted rule (see module doc) and what it was fitted for."""

    alpha: Dict[str, float]  # detector class name -> exponent of the classifier's probability
    shared_alpha: float = 0.0  # for detector classes the split did not see
    margin: float = math.inf  # re-label only when the classifier's best class wins by this
    fitted_for: Dict[str, Any] = field(default_factory=dict)  # classifier probe, first stage, detector classes
    validation: Dict[str, Any] = field(default_factory=dict)  # the split's AP: detector alone, default, fitted

    # ------------------------------------------------------------------ file
    def save(self, path: Any) -> Path:
        d = asdict(self)
        d["margin"] = None if math.isinf(self.margin) else self.margin
        return atomic_save_json(Path(path), {"format": FORMAT, **d})

    @classmethod
    def load(cls, path: Any) -> "FittedFusion":
        """Reads a ``tools/fit_fusion.py`` file. Raises CheckpointError naming the file when it is not one."""
        try:
            d = json.loads(Path(path).read_text())
            if d.pop("format", None) != FORMAT:
                raise ValueError(f"not a fitted fusion file (format {FORMAT!r} expected)")
            margin = d.pop("margin", None)
            out = cls(**d, margin=math.inf if margin is None else float(margin))
            out.alpha = {str(k): float(v) for k, v in out.alpha.items()}
            return out
        except FileNotFoundError:
            raise CheckpointError(f"{path}: no such fusion file") from None
        except (OSError, ValueError, TypeError) as e:
            raise CheckpointError(f"{path}: cannot read the fitted fusion ({e})") from None

    def check(self, classifier: Any, detector_classes: Sequence[str], path: Any = "<fusion file>") -> None:
        """Refuses the file for another classifier (answers on the probe crops differ) or other detector classes.

        Raises:
            CheckpointError: naming the file and what differs.
        """
        want = self.fitted_for.get("detector_classes")
        if want is not None and list(want) != list(detector_classes):
            raise CheckpointError(f"{path}: fitted for a first stage with classes {list(want)[:5]}..., not "
                                  f"{list(detector_classes)[:5]}...; fit it again with tools/fit_fusion.py")
        probe = self.fitted_for.get("classifier_probe")
        if probe is None:
            return
        got = np.asarray(probe_answers(classifier))
        ref = np.asarray(probe)
        if got.shape != ref.shape or float(np.abs(got - ref).max()) > PROBE_TOLERANCE:
            raise CheckpointError(f"{path}: fitted for another classifier ({self.fitted_for.get('classifier')}); "
                                  "fit it again with tools/fit_fusion.py for this one")

    # ------------------------------------------------------------------ the rule
    def alphas(self, class_map: ClassMap) -> Tensor:
        """``[D]`` float: each detector class's exponent."""
        return torch.tensor([self.alpha.get(n, self.shared_alpha) for n in class_map.detector_classes])

    def apply(self, det_classes: Tensor, det_scores: Tensor, probs: Tensor, classified: Tensor,
              class_map: ClassMap) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The fitted fusion of one batch of boxes, in ``fusion.fuse``'s shapes.

        Args:
            det_classes: ``[N]``; det_scores: ``[N]``; probs: ``[N, K]``; classified: ``[N]`` bool.
        Returns:
            ``(classes [N], scores [N], keep [N] (all True), cls_scores [N] (NaN where not classified))``.
        """
        return apply_fitted(det_classes, det_scores, probs, classified, class_map, self.alphas(class_map),
                            self.margin)


def own_class_index(class_map: ClassMap) -> Tensor:
    """``[D]`` int64: each detector class's column in the probabilities (-1 when the classifier lacks it)."""
    index = {n: i for i, n in enumerate(class_map.classifier_classes)}
    return torch.tensor([index.get(n, -1) for n in class_map.detector_classes], dtype=torch.long)


def apply_fitted(det_classes: Tensor, det_scores: Tensor, probs: Tensor, classified: Tensor, class_map: ClassMap,
                 alphas: Tensor, margin: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """``FittedFusion.apply`` with the exponents given per detector class (``alphas`` ``[D]``): what the fit
    evaluates its candidates with."""
    device = det_scores.device
    n = det_classes.numel()
    classes = class_map.det_to_out.to(device)[det_classes].clone()
    scores = det_scores.clone().float()
    keep = torch.ones(n, dtype=torch.bool, device=device)
    cls_scores = torch.full((n,), math.nan, device=device)
    if n == 0:
        return classes, scores, keep, cls_scores
    sets = class_map.sets.to(device)[det_classes]
    c = classified & sets.any(dim=1)
    p = probs.float()
    q = (p * sets).sum(dim=1)
    best_p, best_k = p.masked_fill(~sets, -1.0).max(dim=1)
    own = own_class_index(class_map).to(device)[det_classes]
    p_own = torch.where(own >= 0, p.gather(1, own.clamp(min=0)[:, None]).squeeze(1), torch.zeros_like(q))
    relabel = c & (best_k != own) & (best_p - p_own >= margin) if math.isfinite(margin) else torch.zeros_like(c)
    classes[relabel] = best_k[relabel]
    q = torch.where(relabel, best_p, q)
    a = alphas.to(device).float()[det_classes]
    scores[c] = scores[c] * q[c].clamp(min=0).pow(a[c])
    cls_scores[c] = q[c]
    return classes, scores, keep, cls_scores


def shrink(per_class: Mapping[str, float], counts: Mapping[str, int], shared: float, prior: float) -> Dict[str, float]:
    """Each class's value pulled towards ``shared`` by ``prior / (n + prior)`` (``n``: its validation boxes)."""
    return {k: (counts.get(k, 0) * v + prior * shared) / (counts.get(k, 0) + prior) for k, v in per_class.items()}


__all__ = ["FittedFusion", "apply_fitted", "probe_answers", "probe_crops", "shrink", "FORMAT"]
