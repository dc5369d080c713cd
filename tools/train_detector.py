#!/usr/bin/env python
"""Train a Detectron2 detector (DefaultTrainer) on COCO-format datasets.

    tools/train_detector.py --config-file configs/d2/demo_synthetic_R18_FPN.yaml --output-dir output/det \\
        --dataset demo_train=datasets/synthetic/train/annotations.json [KEY VALUE ...]

Writes OUTPUT_DIR/config.yaml (with the detector's class names, so tools/infer.py --detector-config can use
it as is) and OUTPUT_DIR/model_final.pth.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--dataset", action="append", default=[], metavar="NAME=ANN.json[:IMAGE_ROOT]",
                   help="register a COCO instances file under NAME (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = p.parse_args(argv)
    from crop_classifier.d2.train import detector_cfg, parse_dataset_arg, train_detector

    try:
        datasets = {}
        for d in args.dataset:
            name, json_file, root = parse_dataset_arg(d)
            datasets[name] = (json_file, root)
        cfg = detector_cfg(args.config_file, args.output_dir, args.opts, datasets)
    except (ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(train_detector(cfg, resume=args.resume))
    return 0


if __name__ == "__main__":
    sys.exit(main())
