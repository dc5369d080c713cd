#!/usr/bin/env python
"""Generate synthetic detection scenes (images + COCO JSON) for the demo, tests and benchmarks.

    tools/make_synthetic.py --output datasets/synthetic/train --num-images 400 --seed 0 [--size 512]

Writes OUTPUT/annotations.json and OUTPUT/images/NNNNNN.jpg; the same arguments give identical files,
and a folder that already holds exactly these scenes is left as it is.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from crop_classifier.utils.cli import HelpFormatter  # noqa: E402  (light: argparse only)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--output", required=True, metavar="DIR", help="folder for annotations.json and images/")
    p.add_argument("--num-images", type=int, required=True, metavar="N", help="scenes to generate")
    p.add_argument("--seed", type=int, default=0, help="random seed (with --split: the scenes drawn)")
    p.add_argument("--size", type=int, default=512, help="image side in pixels")
    p.add_argument("--split", default="train", help="split name, part of the random stream")
    args = p.parse_args(argv)

    import json

    from crop_classifier.data.synthetic import generate_scenes

    t0 = time.time()
    try:
        ann = generate_scenes(args.output, args.num_images, seed=args.seed, image_size=args.size,
                              split_name=args.split)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    data = json.loads(Path(ann).read_text())
    print(f"{ann}: {len(data['images'])} images, {len(data['annotations'])} objects, "
          f"{len(data['categories'])} classes ({time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
