"""Per-image partial results of ``tools/infer.py``, so a long run that stops can be resumed.

Each finished image (or video frame) is written at once to ``OUTPUT/parts/<hash of its name>.json``
(atomically: a part is complete or absent), holding that image's share of the run's tally in the
format of the shard parts (``sharding.merge_parts`` combines them). ``parts/options.json`` records the
options that decide the results.

Resuming is explicit (``--resume``): the parts of an earlier run with the same options are reused and
their images are not read again; a rerun without it starts afresh (the old parts are removed), so a run
never silently mixes in results of different options. Parts are keyed by the image's name, so a part
written twice (a crash between the part and the next) counts once. The final outputs are built from
the parts in input order with new image ids numbered in that order, so a resumed run writes the same
``predictions.json`` as an uninterrupted one. The parts are kept after the run (a finished run resumed
is a no-op); delete ``OUTPUT/parts`` to reclaim the space.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Dict

from ..deploy.routed import weights_paths
from ..utils.io import atomic_save_json

logger = logging.getLogger(__name__)

PARTS_DIR = "parts"
OPTIONS_FILE = "options.json"
# Options that decide what an image's results are (not how fast or how they are shown); the second stage's
# knobs come from its config (``SecondStageConfig.changed_flags``: a knob added later at its default changes
# no fingerprint).
_RESULT_OPTIONS = ("detector", "classifier", "classifier_weights", "detector_config", "detector_weights",
                   "detector_opts", "detector_format", "score_thresh", "categories", "eval", "video_stride", "precision", "backend")


def parts_dir(out_dir: Path, shard_index: int = 0, shard_count: int = 1) -> Path:
    base = Path(out_dir) / PARTS_DIR
    return base if shard_count <= 1 else base / f"shard-{shard_index:05d}-of-{shard_count:05d}"


def fingerprint(o: Any) -> Dict[str, Any]:
    fp = {k: getattr(o, k) for k in _RESULT_OPTIONS}
    fp = {k: list(v) if isinstance(v, tuple) else v for k, v in fp.items()}
    fp["second_stage"] = o.stage.changed_flags()
    if getattr(o, "route_thresholds", None):  # only when set: runs from before the option still resume
        fp["route_thresholds"] = [float(t) for t in o.route_thresholds]
    files = weights_paths(o.classifier_weights) if o.classifier_weights else []  # several: a routed set
    stats = [os.stat(f) for f in files if os.path.isfile(f)]  # a retrained checkpoint at the same path differs
    if stats:
        sig = [[st.st_size, int(st.st_mtime)] for st in stats]
        fp["classifier_weights_file"] = sig[0] if len(files) == 1 else sig
    return json.loads(json.dumps(fp, default=str))


def _part_path(directory: Path, file_name: str) -> Path:
    return directory / (hashlib.sha1(file_name.encode("utf-8", "surrogateescape")).hexdigest()[:20] + ".json")


def prepare(directory: Path, fp: Dict[str, Any], *, resume: bool) -> Dict[str, dict]:
    """The finished parts ``{file_name: part}`` to reuse (empty unless ``resume``); writes the options file.

    Raises ValueError when resuming parts written with other options."""
    directory = Path(directory)
    opts_file = directory / OPTIONS_FILE
    done: Dict[str, dict] = {}
    if resume and opts_file.is_file():
        old = json.loads(opts_file.read_text())
        diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
        if diff:
            raise ValueError(f"--resume: {directory} was written with other options ({', '.join(diff)} differ); "
                             "rerun without --resume to start afresh, or use another --output")
        for p in sorted(directory.glob("*.json")):
            if p.name == OPTIONS_FILE:
                continue
            try:
                part = json.loads(p.read_text())
                done[part["file_name"]] = part
            except (ValueError, KeyError, TypeError) as e:  # only a hand-edited part can be broken (atomic writes)
                logger.warning("%s: unusable part (%s); its image is processed again", p, e)
        logger.info("resuming: %d finished image(s) in %s", len(done), directory)
    elif directory.exists():
        shutil.rmtree(directory)
    atomic_save_json(opts_file, fp)
    return done


def write_image_part(directory: Path, part: dict) -> Path:
    return atomic_save_json(_part_path(Path(directory), part["file_name"]), part)
