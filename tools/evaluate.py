#!/usr/bin/env python
"""Evaluate a trained crop classifier on the config's DATASETS.TEST.

    tools/evaluate.py --config-file F --weights OUTPUT_DIR/model_final.pth [--output-dir D] [KEY VALUE ...]

Writes results.json (top-1, top-5, per-class accuracy, confusion matrix) and confusion_matrix.png to
--output-dir (default OUTPUT_DIR/inference). Classes, input size and crop settings come from the checkpoint.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    p.add_argument("--weights", required=True, metavar="FILE", help="a checkpoint written by tools/train.py")
    p.add_argument("--output-dir", metavar="DIR", help="where results go (default OUTPUT_DIR/inference)")
    p.add_argument("--imagenet-weights", metavar="FILE",
                   help="sets MODEL.IMAGENET_WEIGHTS as tools/train.py does, so a training command line can be "
                        "reused; evaluation itself takes every weight from --weights")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # offline machines: no update check on import
    from crop_classifier.config import load_tool_config
    from crop_classifier.engine import evaluate_checkpoint
    from crop_classifier.models import CheckpointError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        cfg = load_tool_config(args.config_file, args.opts, imagenet_weights=args.imagenet_weights,
                               need_imagenet_weights=False)
        result = evaluate_checkpoint(cfg, args.weights, output_dir=args.output_dir, progress=not args.no_progress)
    except (KeyError, ValueError, FileNotFoundError, CheckpointError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    print(json.dumps({k: result[k] for k in ("num_samples", "top1", "top5", "mean_class_accuracy", "paths")},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
