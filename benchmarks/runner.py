"""Runs the benchmark sections with one preset's settings and writes benchmark.json / .md / PNGs.

Presets: ``full`` (about 15 minutes on 2 cores), ``quick`` (about 3 minutes: fewer batches, rounds and
training steps, same figures), ``tiny`` (seconds; for the test suite: tiny widths, no timing value),
``gpu`` (tools/gpu_check.sh: models and crops on CUDA, batches 1-256).
benchmark.json is rewritten atomically after every section, so an interrupted run keeps what finished.
"""
from __future__ import annotations

import copy
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence

import torch

from crop_classifier.utils.io import atomic_save_json

from .env import environment
from .crops import run_crops
from .deploy import run_deploy
from .memory import run_memory
from .models import run_models
from .pipeline import run_pipeline
from .report import write_report
from .routing import run_routing
from .tradeoff import run_tradeoff
from .video import DEMO_DETECTOR_CONFIG, run_video
from .targets import evaluate_targets

SECTIONS = ("models", "crops", "pipeline", "tradeoff", "memory", "deploy", "video", "routing")

PRESETS: Dict[str, Dict[str, dict]] = {
    "full": {
        "models": dict(width=1.0, batches=(1, 8, 32, 128), eager_batches=(8, 32),
                       rounds={1: 3, 8: 3, 32: 3, 128: 2}, min_round_s=0.5, matmul_n=2048,
                       profile=(("v3_79", "optimized", 32), ("tv_inception_v3", "eager", 32))),
        "crops": dict(box_counts=(1, 10, 100, 1000), sizes=(79, 224), rounds=7, min_round_s=0.2),
        "pipeline": dict(box_counts=(1, 20, 100), variants=("v3_79", "v3_151", "v3_299"), widths=(1.0, 0.5),
                         image_wh=(640, 426), min_size_test=800, rounds=2),
        "tradeoff": dict(width=0.125, epochs=3, synthetic_train=120, synthetic_test=40, coco_test_fraction=0.25,
                         datasets=("synthetic", "coco128")),
        "memory": dict(num_images=1000, warmup=50, sample_every=50),
        "deploy": dict(arch="v3_79", width=1.0, num_classes=80, batch=32, rounds=7, calib_batches=4),
        "video": dict(num_videos=4, num_frames=150, num_objects=10),
        "routing": dict(widths=(1.0, 0.125), num_crops=256, batch=32, rounds=5),
    },
    "quick": {
        "models": dict(width=1.0, batches=(1, 8, 32), eager_batches=(8,), rounds={1: 2, 8: 2, 32: 1},
                       min_round_s=0.3, matmul_n=2048),
        "crops": dict(box_counts=(1, 10, 100, 1000), sizes=(79,), rounds=5, min_round_s=0.1),
        "pipeline": dict(box_counts=(1, 20, 100), variants=("v3_79",), widths=(0.5,), image_wh=(640, 426),
                         min_size_test=800, rounds=1),
        "tradeoff": dict(width=0.125, epochs=1, synthetic_train=24, synthetic_test=12, datasets=("synthetic",)),
        "memory": dict(num_images=300, warmup=20, sample_every=50, max_boxes=8),
        "deploy": dict(arch="v3_79", width=1.0, num_classes=80, batch=32, rounds=3, calib_batches=2),
        "video": dict(num_videos=2, num_frames=60, num_objects=10),
        "routing": dict(widths=(1.0, 0.125), num_crops=96, batch=32, rounds=2),
    },
    # tools/gpu_check.sh on a GPU machine (no Detectron2: models and crops only): fp32/bf16/fp16 autocast,
    # torch.compile with --compile, batches 1-256; a few minutes on one recent GPU.
    "gpu": {
        "models": dict(width=1.0, batches=(1, 8, 32, 128, 256), eager_batches=(32,),
                       rounds={1: 3, 8: 3, 32: 3, 128: 3, 256: 3}, min_round_s=0.1, matmul_n=4096),
        "crops": dict(box_counts=(1, 10, 100, 1000), sizes=(79, 299), rounds=5, min_round_s=0.05),
    },
    "tiny": {
        "models": dict(names=("v3_79", "v3_299"), width=0.0625, batches=(1, 2), eager_batches=(2,),
                       rounds={1: 1, 2: 1}, min_round_s=0.0, matmul_n=128, profile=(("v3_79", "optimized", 2),)),
        "crops": dict(box_counts=(1, 10, 100), sizes=(79,), rounds=1, min_round_s=0.0),
        "pipeline": dict(box_counts=(1, 3), variants=("v3_79",), widths=(0.0625,), image_wh=(320, 213),
                         min_size_test=128, rounds=1, config_file="d2/tiny_R18_FPN_random.yaml"),
        "tradeoff": dict(width=0.0625, epochs=1, synthetic_train=2, synthetic_test=1, datasets=("synthetic",),
                         image_size=128, batch_size=8, max_train_crops=8),
        "memory": dict(num_images=20, warmup=2, sample_every=5, max_boxes=3),
        "deploy": dict(arch="v3_79", width=0.0625, num_classes=5, batch=2, rounds=1, warmup=0, calib_batches=1,
                       gemm_n=256),
        "video": dict(num_videos=1, num_frames=3, num_objects=4),
        "routing": dict(widths=(0.0625,), num_crops=12, batch=4, rounds=1, num_classes=5),
    },
}


@dataclass(frozen=True)
class DataPaths:
    """Files the sections read from outside benchmarks/ (``tools/benchmark.py`` gives the repository's).

    Attributes:
        configs: the folder the presets' relative config files are in (the repository's ``configs/``): the
            tiny preset's detector (pipeline section) and the demo detector (video section).
        coco128: the COCO128 folder (``annotations/instances_train2017.json``, ``images/``): the trade-off's
            ``coco128`` dataset and the box sides of the routing section (without it: a log-normal).
        demo_weights: the shipped demo models (``manifest.json``, ``detector.pth``, ``classifier.pth``): video.
    """

    configs: Optional[Path] = None
    coco128: Optional[Path] = None
    demo_weights: Optional[Path] = None

    def config(self, name: str) -> str:
        """``name`` (absolute, or relative to ``configs``) as a path."""
        if os.path.isabs(name):
            return name
        if self.configs is None:
            raise ValueError(f"{name} is relative to the configs folder, and none was given (DataPaths.configs)")
        return str(Path(self.configs) / name)


def _run_section(name: str, settings: dict, device: str, compile: bool, work_dir: Path, paths: DataPaths,
                 log) -> dict:
    if name == "models":
        return run_models(device=device, compile=compile, log=log, **settings)
    if name == "tradeoff":
        return run_tradeoff(device=device, work_dir=work_dir / "tradeoff_data", coco128=paths.coco128, log=log,
                            **settings)
    if name == "pipeline" and settings.get("config_file"):
        settings = {**settings, "config_file": paths.config(settings["config_file"])}
    if name == "routing" and paths.coco128 is not None:
        settings = {**settings, "coco_annotations": Path(paths.coco128) / "annotations" / "instances_train2017.json"}
    if name == "video":
        detector_config = paths.config(DEMO_DETECTOR_CONFIG) if paths.configs is not None else None
        settings = {"weights_dir": paths.demo_weights, "detector_config": detector_config, **settings}
    runners = {"crops": run_crops, "pipeline": run_pipeline, "memory": run_memory, "deploy": run_deploy,
               "video": run_video, "routing": run_routing}
    if name not in runners:
        raise ValueError(f"unknown benchmark section {name!r}; valid: {', '.join(SECTIONS)}")
    return runners[name](device=device, log=log, **settings)


def run_benchmark(
    output: os.PathLike,
    *,
    preset: str = "full",
    device: str = "cpu",
    only: Optional[Sequence[str]] = None,
    compile: bool = False,
    overrides: Optional[Dict[str, dict]] = None,
    work_dir: Optional[os.PathLike] = None,
    command: Optional[str] = None,
    paths: Optional[DataPaths] = None,
    log: Callable[[str], None] = print,
) -> Dict[str, object]:
    """Run the sections in ``only`` (default: all) and write the outputs into ``output``; ``paths``: where
    the sections that read files find them (default: nowhere; the sections that need one fail, as a section)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid: {', '.join(PRESETS)}")
    only = list(only or SECTIONS)
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        raise ValueError(f"unknown section(s) {bad}; valid: {', '.join(SECTIONS)}")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but torch.cuda.is_available() is False on this machine")
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(work_dir) if work_dir else out / "work"
    settings = copy.deepcopy(PRESETS[preset])
    missing = [s for s in only if s not in settings]
    if missing:
        raise ValueError(f"preset {preset!r} has no settings for section(s) {missing}")
    for k, v in (overrides or {}).items():
        settings.setdefault(k, {}).update(v)

    results: Dict[str, object] = {
        "preset": preset, "device": device, "sections": only, "complete": False,
        "command": command or " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
        "environment": environment(device),
        "data_paths": {k: None if v is None else str(v) for k, v in vars(paths or DataPaths()).items()},
        "settings": {k: _jsonable(settings[k]) for k in only},
    }
    t_all = time.perf_counter()
    for name in only:
        log(f"[benchmark] {name} ...")
        t0 = time.perf_counter()
        try:
            section = _run_section(name, settings[name], device, compile, work, paths or DataPaths(), log)
        except Exception as e:  # one failing section must not lose the others' figures
            traceback.print_exc()
            section = {"error": f"{type(e).__name__}: {e}"}
        section["section_seconds"] = time.perf_counter() - t0
        results[name] = section
        log(f"[benchmark] {name} done in {section['section_seconds']:.0f} s")
        results["targets"] = evaluate_targets(results)
        atomic_save_json(out / "benchmark.json", results)
    results["total_seconds"] = time.perf_counter() - t_all
    results["environment"]["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    results["complete"] = True
    results["plots"] = write_report(results, out)
    atomic_save_json(out / "benchmark.json", results)
    return results


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v
