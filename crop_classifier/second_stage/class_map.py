"""Detector classes -> sets of classifier classes, by name, and the output class space.

A detector class maps to a *set* of classifier classes: ``{"vehicle": ["car", "bus", "truck"]}`` is
coarse-to-fine, ``"*"`` means every classifier class, a ``"*"`` key is the entry of every detector class not
named (``"*=*"``: the classifier may pick any of its classes for any box, the same-class-space case), and
without an entry a detector class maps to the classifier class of the same name. A detector class with none
of these passes through untouched.

Output class ids: the classifier's classes in the checkpoint's order (ids ``0 .. K-1``), followed by every
detector class whose name is not a classifier class, in the detector's order (ids ``K ..``).

A classifier with a background class (``background``: its name, the checkpoint's last class) keeps it out
of both: it is never an output class and never in a detector class's set (``"*"`` means every *object*
class; naming it in the map is an error). ``background_index`` is its column in the probabilities.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor

ALL_CLASSES = "*"

MapValue = Union[str, Sequence[str]]


def parse_class_map(spec: Union[None, str, Mapping[str, MapValue], Sequence[Sequence[str]]]) -> Dict[str, List[str]]:
    """Normalises the ways a class map is written into ``{detector_name: [classifier names or "*"]}``.

    Accepted: a dict ``{"vehicle": ["car", "bus"]}`` (or ``"car,bus"``), a list of pairs
    ``[["vehicle", "car,bus"], ...]`` (what a Detectron2 YAML holds), or a string
    ``"vehicle=car,bus;person=person"`` (what a command line holds).
    """
    if spec is None or spec == "" or spec == [] or spec == {}:
        return {}
    if isinstance(spec, str):
        pairs = []
        for item in spec.split(";"):
            item = item.strip()
            if not item:
                continue
            if "=" not in item:
                raise ValueError(f"class map entry {item!r}: expected DETECTOR_CLASS=CLASS[,CLASS...]")
            det, _, targets = item.partition("=")
            pairs.append((det.strip(), targets))
    elif isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        pairs = []
        for item in spec:
            if len(item) != 2:
                raise ValueError(f"class map entry {item!r}: expected a pair [detector_class, classifier_classes]")
            pairs.append((item[0], item[1]))
    out: Dict[str, List[str]] = {}
    for det, targets in pairs:
        if isinstance(targets, str):
            targets = [t.strip() for t in targets.split(",")]
        targets = [str(t).strip() for t in targets if str(t).strip()]
        if not targets:
            raise ValueError(f"class map entry for {det!r} names no classifier class")
        if det in out:
            raise ValueError(f"class map names detector class {det!r} twice")
        out[str(det)] = targets
    return out


class ClassMap:
    """Detector classes -> sets of classifier classes, and the output class space (see module doc)."""

    def __init__(
        self,
        detector_classes: Sequence[str],
        classifier_classes: Sequence[str],
        mapping: Union[None, str, Mapping[str, MapValue], Sequence[Sequence[str]]] = None,
        background: Optional[str] = None,
    ):
        self.detector_classes = [str(c) for c in detector_classes]
        all_classes = [str(c) for c in classifier_classes]
        self.background_index = _background_index(all_classes, background)
        # The object classes; the background column (the last) stays in the probabilities only.
        self.classifier_classes = all_classes[:self.background_index]
        self.num_probs = len(all_classes)
        for what, names in (("detector", self.detector_classes), ("classifier", self.classifier_classes)):
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"{what} class names must be unique; repeated: {dup}")
        mapping = parse_class_map(mapping)
        cls_index = {n: i for i, n in enumerate(self.classifier_classes)}
        det_index = {n: i for i, n in enumerate(self.detector_classes)}
        unknown = [d for d in mapping if d not in det_index and d != ALL_CLASSES]
        if unknown:
            raise ValueError(f"class map names detector classes {unknown} that the detector does not have "
                             f"(detector classes: {self.detector_classes[:20]}{' ...' if len(self.detector_classes) > 20 else ''})")
        if background and background in mapping:
            raise ValueError(f"class map names the background class {background!r} as a detector class")
        D, K = len(self.detector_classes), len(self.classifier_classes)
        sets = torch.zeros(D, self.num_probs, dtype=torch.bool)  # the background column is never set
        for d, name in enumerate(self.detector_classes):
            # A named entry, else the "*" entry for every detector class not named, else same-name matching.
            key = name if name in mapping else ALL_CLASSES if ALL_CLASSES in mapping else None
            if key is not None:
                for target in mapping[key]:
                    if target == ALL_CLASSES:
                        sets[d, :K] = True
                    elif target in cls_index and target != background:
                        sets[d, cls_index[target]] = True
                    else:
                        raise ValueError(f"class map entry {key!r} -> {target!r}: the classifier has no class "
                                         f"{target!r} (classifier classes: {self.classifier_classes})")
            elif name in cls_index and name != background:
                sets[d, cls_index[name]] = True
        self.sets = sets
        self.output_class_names = self.classifier_classes + [n for n in self.detector_classes
                                                             if n not in cls_index]
        out_index = {n: i for i, n in enumerate(self.output_class_names)}
        self.det_to_out = torch.tensor([out_index[n] for n in self.detector_classes], dtype=torch.long)

    @property
    def mapped(self) -> Tensor:
        """``[D]`` bool: detector classes that have at least one classifier class."""
        return self.sets.any(dim=1)

    def targets(self, detector_class: str) -> List[str]:
        d = self.detector_classes.index(detector_class)
        return [self.classifier_classes[k] for k in torch.nonzero(self.sets[d]).flatten().tolist()]

    def set_means(self, values: Mapping[str, float], default: float = 1.0) -> Tensor:
        """``[D]``: per detector class, the mean of ``values`` over its set's classes that ``values`` names
        (``default`` for a class with none)."""
        out = torch.full((len(self.detector_classes),), float(default))
        for d in range(len(self.detector_classes)):
            got = [float(values[self.classifier_classes[k]]) for k in torch.nonzero(self.sets[d]).flatten().tolist()
                   if self.classifier_classes[k] in values]
            if got:
                out[d] = sum(got) / len(got)
        return out

    @property
    def has_background(self) -> bool:
        return self.background_index < self.num_probs

    def describe(self) -> Dict[str, List[str]]:
        return {d: self.targets(d) for d in self.detector_classes if self.targets(d)}

    def selection(self, reclassify: Optional[Sequence[str]] = None) -> Tensor:
        """``[D]`` bool: detector classes whose boxes go to the classifier (every mapped class, or those of
        ``reclassify``, each of which must be a mapped detector class)."""
        chosen = [r for r in (reclassify or []) if r]
        if not chosen:
            return self.mapped.clone()
        unknown = [r for r in chosen if r not in self.detector_classes]
        if unknown:
            raise ValueError(f"classes to re-classify {unknown} are not detector classes")
        unmapped = [r for r in chosen if not bool(self.mapped[self.detector_classes.index(r)])]
        if unmapped:
            raise ValueError(f"classes to re-classify {unmapped} map to no classifier class; add them to the class map")
        return self.mapped & torch.tensor([d in set(chosen) for d in self.detector_classes], dtype=torch.bool)


def _background_index(classifier_classes: Sequence[str], background: Optional[str]) -> int:
    """The background class's column (it must be the last class), or ``len(classifier_classes)`` without one."""
    if not background:
        return len(classifier_classes)
    if not classifier_classes or classifier_classes[-1] != background:
        raise ValueError(f"background class {background!r} must be the classifier's last class; classes: "
                         f"{list(classifier_classes)[-5:]}")
    return len(classifier_classes) - 1
