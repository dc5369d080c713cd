#!/usr/bin/env python
"""Evaluate a trained crop classifier on the config's DATASETS.TEST.

    tools/evaluate.py --config-file F --weights OUTPUT_DIR/model_final.pth [--output-dir D]
                      [--route-thresholds 109,212] [KEY VALUE ...]

Writes results.json (top-1, top-5, per-class accuracy, confusion matrix, size_buckets: top-1 per box size
bucket of the box's longer side <32, 32-96, 96-200, >200 px) and confusion_matrix.png (the 20 most frequent
classes, row-normalised, and the largest confusions of all classes) to --output-dir
(default OUTPUT_DIR/inference), and prints the size table (stderr) and a JSON summary (stdout). Classes,
input size and crop settings come from the checkpoint; a routed checkpoint (MODEL.ARCH auto) feeds each crop
at its route's size, with the checkpoint's route thresholds unless --route-thresholds gives others.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    from crop_classifier.utils.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE", help="the YAML config the classifier was trained with")
    p.add_argument("--weights", required=True, metavar="FILE", help="a checkpoint written by tools/train.py")
    p.add_argument("--output-dir", metavar="DIR", help="where results go (default OUTPUT_DIR/inference)")
    p.add_argument("--imagenet-weights", metavar="FILE",
                   help="sets MODEL.IMAGENET_WEIGHTS as tools/train.py does, so a training command line can be "
                        "reused; evaluation itself takes every weight from --weights")
    p.add_argument("--route-thresholds", metavar="PX,PX",
                   help="routed checkpoints: native sides (px, box side with context) between consecutive routes "
                        "(default: the checkpoint's)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE",
                   help="config overrides, e.g. DATASETS.TEST \"['coco:ANN:IMAGES']\" (options may come after them)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    # Intermixed: options after the KEY VALUE pairs are options too, not overrides.
    return build_parser().parse_intermixed_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # offline machines: no update check on import
    from crop_classifier.config import load_tool_config
    from crop_classifier.engine import evaluate_checkpoint
    from crop_classifier.engine.evaluation import format_size_buckets
    from crop_classifier.errors import CheckpointError, ParameterError, error_line
    from crop_classifier.models.routing import parse_thresholds

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        thresholds = None if args.route_thresholds is None else parse_thresholds(args.route_thresholds)
        cfg = load_tool_config(args.config_file, args.opts, imagenet_weights=args.imagenet_weights,
                               need_imagenet_weights=False)
        result = evaluate_checkpoint(cfg, args.weights, output_dir=args.output_dir, progress=not args.no_progress,
                                     route_thresholds=thresholds)
    except (KeyError, ValueError, FileNotFoundError, CheckpointError) as e:
        line = error_line(e) if isinstance(e, ParameterError) else e.args[0] if e.args else e  # KeyError: unquoted
        print(f"error: {line}", file=sys.stderr)
        return 2
    if result.get("size_buckets"):
        print("top-1 per box size (longer side, px):\n" + format_size_buckets(result["size_buckets"]), file=sys.stderr)
    keys = ("num_samples", "top1", "top5", "mean_class_accuracy", "size_buckets", "routes", "paths")
    print(json.dumps({k: result[k] for k in keys if k in result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
