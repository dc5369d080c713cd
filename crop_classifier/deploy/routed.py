"""Routed classifiers (``models.routing``) on every runtime: which files make a routed set, and how loaded
single-stem classifiers (any backend) become one ``RoutedClassifier``.

A routed set is named by a comma list (``a.pth,b.onnx,c.pth``: separately trained single-stem classifiers of
distinct stems, or the per-route files ``tools/export.py`` writes for a routed checkpoint) or by the name
given to ``tools/export.py`` when only its per-route files exist (``out.onnx`` -> ``out.v3_79.onnx``, ...).
Per-route export files carry the set's routes (``export.ROUTE_SET_KEY``), so their thresholds come back too.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple, Union

from ..errors import ParameterError
from ..models.inception_v3 import STEMS
from ..models.inference import RoutedClassifier, routed_classifier
from ..models.routing import ROUTED_ARCH, Routes
from .export import ROUTE_SET_KEY, route_file

PathLike = Union[str, os.PathLike]
Spec = Union[PathLike, Sequence[PathLike]]


def route_files(path: PathLike) -> List[Path]:
    """The per-route files a routed export to ``path`` wrote (smallest input first); [] when none exist."""
    archs = sorted(STEMS, key=lambda a: STEMS[a].input_size)
    return [route_file(path, a) for a in archs if route_file(path, a).is_file()]


def weights_paths(spec: Spec) -> List[Path]:
    """The file(s) a ``path`` (``--classifier-weights``) names: a comma list (or a sequence) of files, one file, or
    the export name of a routed checkpoint whose per-route files exist (``out.onnx`` -> its route files)."""
    items = [str(s) for s in spec] if isinstance(spec, (list, tuple)) else str(os.fspath(spec)).split(",")
    paths = [Path(s.strip()) for s in items if s.strip()]
    if not paths:
        raise ParameterError("path", f"{spec!r}: no file named")
    if len(paths) == 1 and not paths[0].exists():
        return route_files(paths[0]) or paths
    return paths


def _set_thresholds(classifiers: Sequence[Any]) -> Optional[Tuple[float, ...]]:
    """The thresholds the files themselves record (per-route exports of one routed checkpoint), when they
    describe exactly these routes; else None (``Routes``' defaults)."""
    archs = sorted((str(c.meta.arch) for c in classifiers), key=lambda a: STEMS[a].input_size if a in STEMS else 0)
    for c in classifiers:
        recorded = c.meta.extra.get(ROUTE_SET_KEY)
        if recorded and list(recorded.get("archs", [])) == archs:
            return tuple(float(t) for t in recorded["thresholds"])
    return None


def check_thresholds(archs: Sequence[str], thresholds: Optional[Sequence[float]]) -> None:
    """``ParameterError`` naming ``route_thresholds`` when ``thresholds`` do not fit routes ``archs``."""
    if thresholds is None:
        return
    try:
        Routes(tuple(archs), tuple(thresholds))
    except ValueError as e:
        raise ParameterError("route_thresholds", f"{','.join(f'{t:g}' for t in thresholds)}: {e}") from None


def assemble(classifiers: Sequence[Any], paths: Sequence[Path], thresholds: Optional[Sequence[float]] = None,
             expected_arch: Optional[str] = None) -> RoutedClassifier:
    """Loaded single-stem classifiers (one per file of ``paths``) as one routed set. ``thresholds``: the
    user's, else those the files record, else the defaults. Errors name the parameter and file."""
    if expected_arch not in (None, ROUTED_ARCH):
        raise ParameterError("expected_meta", f"{len(paths)} files make a routed set ({ROUTED_ARCH}), not "
                             f"{expected_arch}")
    for p, c in zip(paths, classifiers):
        if getattr(c, "routes", None) is not None or c.meta.arch not in STEMS:
            raise ParameterError("path", f"{p}: a {c.meta.arch} classifier; a routed set is made of "
                                 f"single-stem files ({', '.join(STEMS)}), one per stem")
    archs = sorted((str(c.meta.arch) for c in classifiers), key=lambda a: STEMS[a].input_size)
    if len(set(archs)) != len(archs):
        raise ParameterError("path", f"the routed set has stems {archs}; each stem at most once")
    check_thresholds(archs, thresholds)
    return routed_classifier(classifiers, thresholds if thresholds is not None else _set_thresholds(classifiers))


def only_routed(clf: Any, thresholds: Optional[Sequence[float]], where: PathLike) -> Any:
    """``clf``; ``ParameterError`` (``route_thresholds``) when ``thresholds`` were given for a single-stem
    classifier."""
    if thresholds is not None and getattr(clf, "routes", None) is None:
        raise ParameterError("route_thresholds", f"{where} is a single-stem ({clf.meta.arch}) classifier; "
                             f"thresholds route crops between the stems of a routed ({ROUTED_ARCH}) one")
    return clf


__all__ = ["route_files", "weights_paths", "assemble", "check_thresholds", "only_routed"]
