#!/usr/bin/env python
"""Train a crop classifier from a config (Detectron2-style command line).

    tools/train.py --config-file configs/cpu/v3_79_w025_synthetic.yaml [--resume] [--output-dir D]
                   [--imagenet-weights FILE] [KEY VALUE ...]

Several processes (one per GPU, or CPU processes with gloo):
    torchrun --nproc_per_node=N tools/train.py --config-file F SOLVER.IMS_PER_BATCH 256
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    from crop_classifier.utils.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="YAML config (may use _BASE_)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUTPUT_DIR/last_checkpoint (optimiser, schedule, epoch, random states)")
    p.add_argument("--output-dir", metavar="DIR", help="shorthand for OUTPUT_DIR DIR (default: the config's OUTPUT_DIR)")
    p.add_argument("--imagenet-weights", metavar="FILE",
                   help="start from a local ImageNet Inception-v3 file (torchvision or timm state dict, .pth or "
                        ".safetensors; 'imagenet' downloads torchvision's); shorthand for MODEL.IMAGENET_WEIGHTS FILE "
                        "(default: the config's)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE",
                   help="config overrides, e.g. SOLVER.MAX_EPOCHS 10 MODEL.WIDTH 0.25 (the options above may come "
                        "before, between or after them)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    # Intermixed: options after the KEY VALUE pairs are options too, not overrides.
    return build_parser().parse_intermixed_args(argv)


def resume_command(argv) -> str:
    """The command line that continues this run: the same arguments with ``--resume``."""
    args = list(sys.argv[1:] if argv is None else argv)
    return " ".join(shlex.quote(a) for a in ["tools/train.py", *args] + ([] if "--resume" in args else ["--resume"]))


def _interrupted(cfg, argv) -> int:
    """Ctrl-C: name the checkpoint a resumed run starts from and the command; exit 130 like a shell."""
    if cfg is None:
        print("\ninterrupted before training started: nothing written", file=sys.stderr)
        return 130
    marker = Path(cfg.OUTPUT_DIR) / "last_checkpoint"
    saved = (f"the last complete checkpoint is {Path(cfg.OUTPUT_DIR) / marker.read_text().strip()}"
             if marker.is_file() else
             f"no checkpoint in {cfg.OUTPUT_DIR} yet (one every SOLVER.CHECKPOINT_PERIOD={cfg.SOLVER.CHECKPOINT_PERIOD} "
             "epoch(s)): --resume starts from scratch")
    print(f"\ninterrupted: {saved}; continue with: {resume_command(argv)}", file=sys.stderr)
    return 130


def main(argv=None) -> int:
    args = parse_args(argv)
    state = {}  # what _train got to: the config (for the resume message), whether this is the main process
    try:
        return _train(args, state)
    except KeyboardInterrupt:
        if not state.get("main", True):  # under torchrun one process says it
            return 130
        return _interrupted(state.get("cfg"), argv)


def _train(args, state) -> int:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # offline machines: no update check on import
    from crop_classifier.config import load_tool_config
    from crop_classifier.engine import train
    from crop_classifier.engine.distributed import init_from_env, is_main_process
    from crop_classifier.errors import CheckpointError, NonFiniteLossError, UsageError, WeightsUnavailableError

    opts = list(args.opts) + (["OUTPUT_DIR", args.output_dir] if args.output_dir else [])
    try:
        cfg = load_tool_config(args.config_file, opts, imagenet_weights=args.imagenet_weights)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    state["cfg"] = cfg
    init_from_env()
    main_proc = state["main"] = is_main_process()
    handlers = [logging.StreamHandler()]
    if main_proc:
        Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(Path(cfg.OUTPUT_DIR) / "log.txt"))
    logging.basicConfig(level=logging.INFO if main_proc else logging.WARNING, handlers=handlers,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        result = train(cfg, resume=args.resume, progress=not args.no_progress)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        return 3
    except (UsageError, CheckpointError, WeightsUnavailableError) as e:  # e.g. unusable ImageNet weights
        print(f"error: {e}", file=sys.stderr)
        return 2
    if main_proc:
        print(json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in result.items()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
