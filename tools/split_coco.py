#!/usr/bin/env python
"""Split a COCO instances file into training and held-out images (whole images, never boxes of one image).

    tools/split_coco.py ../shared/data/coco128/annotations/instances_train2017.json --output-dir datasets/coco128_split

Writes OUTPUT/train.json and OUTPUT/test.json (same categories and image file names, so the original image
folder serves both). The rule is the resolution trade-off's (``benchmarks/tradeoff.py``): among the images that
have a non-crowd box, sorted by id, every ``--every``-th (default 4th) is held out; images without one stay in
training. The same file always gives the same split.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crop_classifier.utils.cli import HelpFormatter  # noqa: E402  (light: argparse only)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("annotations", help="COCO instances JSON")
    p.add_argument("--output-dir", required=True, metavar="DIR", help="folder for train.json and test.json")
    p.add_argument("--every", type=int, default=4, metavar="K", help="hold out every K-th image")
    args = p.parse_args(argv)
    if args.every < 2:
        print(f"error: --every must be >= 2, got {args.every}", file=sys.stderr)
        return 2

    from crop_classifier.coco_io import read_json, split_held_out
    from crop_classifier.utils.io import atomic_save_json

    try:
        train, test = split_held_out(read_json(args.annotations, "COCO annotations"), args.every)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    out = Path(args.output_dir)
    for name, data in (("train", train), ("test", test)):
        atomic_save_json(out / f"{name}.json", data)
        print(f"{out / f'{name}.json'}: {len(data['images'])} images, {len(data['annotations'])} annotations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
