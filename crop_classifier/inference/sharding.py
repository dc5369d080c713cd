"""Sharded inference: each process (a torchrun rank, or ``--num-shards K --shard-id I`` from a scheduler)
runs a contiguous part of the inputs and writes ``OUTPUT/shards/part-I-of-K.json``; once every part is
there, one process merges them into the same outputs a single process writes.

Image ids that no annotation file fixes are numbered in input order during the merge, so the merged
``predictions.json`` equals the single-process one whatever the number of shards.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..engine import distributed as du
from ..utils.io import atomic_save_json

logger = logging.getLogger(__name__)

SHARD_DIR = "shards"
_SUMMED = ("images", "boxes", "crops", "changed", "dropped", "t_detect", "t_second", "top1_hits", "top1_total")
_LISTS = ("det_results", "results", "eval_img_ids", "entry_errors")
# {key: count} summed per key: a routed classifier's crops per input size; boxes the second stage removed, by
# reason; pictures written / left empty
_COUNTS = ("route_crops", "dropped_by", "vis")


@dataclass(frozen=True)
class Shard:
    count: int = 1
    index: int = 0
    torchrun: bool = False  # synchronised by a process group (barrier), else by the part files alone

    def take(self, items: Sequence) -> list:
        """This shard's contiguous part of ``items`` (sizes differ by at most one)."""
        n = len(items)
        return list(items[self.index * n // self.count:(self.index + 1) * n // self.count])

    def part_path(self, out_dir: Path, index: Optional[int] = None) -> Path:
        i = self.index if index is None else index
        return Path(out_dir) / SHARD_DIR / f"part-{i:05d}-of-{self.count:05d}.json"


def resolve_shard(num_shards: int = 0, shard_id: int = 0) -> Shard:
    """``--num-shards/--shard-id`` when given (> 0), else the torchrun world (rank/world size), else one shard."""
    if num_shards:
        if num_shards < 1 or not 0 <= shard_id < num_shards:
            raise ValueError(f"--num-shards {num_shards} --shard-id {shard_id}: need 0 <= shard-id < num-shards")
        return Shard(num_shards, shard_id, torchrun=False)
    if shard_id:
        raise ValueError("--shard-id needs --num-shards")
    if du.init_from_env():
        return Shard(du.get_world_size(), du.get_rank(), torchrun=True)
    return Shard()


def shard_device(name: Optional[str], shard: Shard) -> Optional[str]:
    """Under torchrun, the default GPU is this process's local one."""
    if name or not shard.torchrun:
        return name
    import torch

    return f"cuda:{du.get_local_rank()}" if torch.cuda.is_available() else "cpu"


def write_part(shard: Shard, out_dir: Path, tally: Dict[str, Any], bad: List[dict], wall: float,
               records: List[Tuple[int, bool]]) -> Path:
    """``records``: (image id, id fixed by an annotation file) of every processed image, in input order."""
    part = {"shard": shard.index, "num_shards": shard.count, "wall": wall, "bad": bad, "records": records,
            **{k: tally[k] for k in _SUMMED + _LISTS + _COUNTS}}
    return atomic_save_json(shard.part_path(out_dir), part)


def read_parts(shard: Shard, out_dir: Path) -> Optional[List[dict]]:
    """All parts in shard order, or None while some are missing."""
    parts = []
    for i in range(shard.count):
        p = shard.part_path(out_dir, i)
        if not p.is_file():
            return None
        try:
            part = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not a complete shard part ({e})") from None
        if part.get("num_shards") != shard.count or part.get("shard") != i:
            raise ValueError(f"{p}: written by shard {part.get('shard')} of {part.get('num_shards')}, "
                             f"expected {i} of {shard.count} (stale parts from another run? remove {p.parent})")
        parts.append(part)
    return parts


def merge_parts(parts: List[dict], first_new_id: int) -> Tuple[Dict[str, Any], List[dict], float]:
    """(merged tally fields, bad inputs, wall seconds = the slowest shard). Image ids new to every
    annotation file are renumbered from ``first_new_id`` in input order, as a single process numbers them."""
    merged: Dict[str, Any] = {k: 0 for k in _SUMMED}
    merged.update({k: [] for k in _LISTS})
    merged.update({k: {} for k in _COUNTS})
    bad: List[dict] = []
    next_id = first_new_id
    for part in parts:
        new_ids = {}
        for image_id, known in part["records"]:
            if not known:
                new_ids[image_id], next_id = next_id, next_id + 1
        for k in _SUMMED:
            merged[k] += part[k]
        for k in _COUNTS:  # absent from parts written before the key existed
            for key, n in part.get(k, {}).items():
                merged[k][key] = merged[k].get(key, 0) + n
        for k in ("results", "det_results"):
            merged[k] += [{**r, "image_id": new_ids.get(r["image_id"], r["image_id"])} for r in part[k]]
        merged["eval_img_ids"] += [new_ids.get(i, i) for i in part["eval_img_ids"]]
        merged["entry_errors"] += part.get("entry_errors", [])  # malformed entries found per image
        bad += part["bad"]
    return merged, bad, max((p["wall"] for p in parts), default=0.0)


def gather_parts(shard: Shard, out_dir: Path) -> Optional[List[dict]]:
    """The parts when this process is the one to merge, else None.

    torchrun: every rank waits for the others; rank 0 merges. Scheduler shards: whichever shard finds all
    parts written merges (two finishing together write the same files, atomically)."""
    if shard.torchrun:
        du.barrier()
        return read_parts(shard, out_dir) if du.is_main_process() else None
    parts = read_parts(shard, out_dir)
    if parts is None:
        logger.warning("shard %d of %d written; predictions.json is merged once every shard has finished",
                       shard.index, shard.count)
    return parts
