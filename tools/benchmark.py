#!/usr/bin/env python
"""Speed and resolution trade-off benchmarks; writes benchmark.json, benchmark.md and PNG plots.

    tools/benchmark.py --output DIR [--quick] [--device cpu|cuda]
        [--only models,crops,pipeline,tradeoff,memory,deploy,video,routing]

The full run takes about 15 minutes on 2 CPU cores before the deploy, video and routing sections (routing:
an estimated 10 more at full width), --quick about 3. Ratios (against torchvision, the
per-box crop loop, a dense matmul, the detector) come from interleaved timings in the same run; absolute
figures depend on the machine and its load. See docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import os
import sys

# albumentations (imported by the data package) checks PyPI on import; benchmarks stay offline and quiet.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# The benchmarks/ package sits beside crop_classifier/ in the repository and is not installed with it.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)
# Data the sections read, next to the checkout (the tests' layout: ../shared beside the repository).
COCO128 = os.path.join(os.path.dirname(REPO), "shared", "data", "coco128")
DEMO_WEIGHTS = os.path.join(REPO, "demo_weights")
CONFIGS = os.path.join(REPO, "configs")


def parse_args(argv=None) -> argparse.Namespace:
    from benchmarks.runner import SECTIONS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", required=True, metavar="DIR", help="folder for benchmark.json/.md and plots")
    p.add_argument("--quick", action="store_true", help="about 3 minutes on 2 cores: fewer batches/rounds/steps")
    p.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # test-suite settings: seconds, no meaning
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    p.add_argument("--only", default=",".join(SECTIONS), metavar="LIST",
                   help=f"comma-separated sections (default all): {','.join(SECTIONS)}")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd classifiers (models section)")
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    p.add_argument("--tradeoff-epochs", type=int, default=0, help="override the trade-off training epochs")
    p.add_argument("--tradeoff-width", type=float, default=0.0, help="override the trade-off model width")
    p.add_argument("--tradeoff-batch", type=int, default=0, help="override the trade-off training batch size")
    p.add_argument("--tradeoff-train-scenes", type=int, default=0,
                   help="override the number of synthetic training scenes of the trade-off")
    p.add_argument("--tradeoff-test-scenes", type=int, default=0,
                   help="override the number of synthetic test scenes of the trade-off")
    p.add_argument("--tradeoff-datasets", default="", metavar="LIST",
                   help="override the trade-off datasets: synthetic,synthetic_wide,coco128 or some of them")
    p.add_argument("--tradeoff-models", default="", metavar="LIST",
                   help="trade-off rows to train (default all): comma-separated names, e.g. v3_79,'routed (auto)'")
    p.add_argument("--tradeoff-recipe", choices=("cpu", "paper"), default="",
                   help="trade-off solver settings: cpu (default; configs/cpu's overrides for short runs) or paper")
    p.add_argument("--tradeoff-init", default="", metavar="CKPT",
                   help="start every trade-off row from this checkpoint (one of ours of the trade-off's width, or an "
                        "ImageNet Inception-v3 file at width 1) instead of from scratch")
    p.add_argument("--tradeoff-background", type=float, default=0.0, metavar="RATIO",
                   help="give every trade-off row a background class: RATIO random background boxes per object in "
                        "the training and test crops (default 0: none)")
    p.add_argument("--work-dir", metavar="DIR", help="cache for generated data (default OUTPUT/work)")
    p.add_argument("--coco128", default=COCO128, metavar="DIR",
                   help="COCO128 (annotations/instances_train2017.json, images/): the trade-off's coco128 dataset and "
                        "the routing section's box sizes (default ../shared/data/coco128 beside the repository)")
    p.add_argument("--demo-weights", default=DEMO_WEIGHTS, metavar="DIR",
                   help="the shipped demo models of the video section (default the repository's demo_weights/)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    import torch

    from benchmarks.runner import SECTIONS

    only = [s.strip() for s in args.only.split(",") if s.strip()]
    bad = [s for s in only if s not in SECTIONS]
    if bad or not only:
        print(f"error: --only {args.only!r}: unknown section(s) {bad}; valid: {','.join(SECTIONS)}", file=sys.stderr)
        return 2
    if args.quick and args.tiny:
        print("error: --quick and --tiny are exclusive", file=sys.stderr)
        return 2
    from benchmarks.tradeoff import DATASETS

    from benchmarks.tradeoff import MODELS

    args.tradeoff_models = tuple(m.strip() for m in args.tradeoff_models.split(",") if m.strip())
    bad = [m for m in args.tradeoff_models if m not in {x[0] for x in MODELS}]
    if bad:
        print(f"error: --tradeoff-models: unknown row(s) {bad}; valid: {', '.join(x[0] for x in MODELS)}",
              file=sys.stderr)
        return 2
    args.tradeoff_datasets = tuple(d.strip() for d in args.tradeoff_datasets.split(",") if d.strip())
    bad = [d for d in args.tradeoff_datasets if d not in DATASETS]
    if bad:
        print(f"error: --tradeoff-datasets: unknown dataset(s) {bad}; valid: {', '.join(DATASETS)}", file=sys.stderr)
        return 2
    if args.tradeoff_batch < 0:
        print(f"error: --tradeoff-batch must be positive, got {args.tradeoff_batch}", file=sys.stderr)
        return 2
    if args.tradeoff_background < 0:
        print(f"error: --tradeoff-background must be >= 0, got {args.tradeoff_background}", file=sys.stderr)
        return 2
    if args.tradeoff_init and args.tradeoff_init != "imagenet" and not os.path.isfile(args.tradeoff_init):
        print(f"error: --tradeoff-init: no such file: {args.tradeoff_init}", file=sys.stderr)
        return 2
    if args.threads < 0:
        print(f"error: --threads must be >= 0, got {args.threads}", file=sys.stderr)
        return 2
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args, only)
    finally:
        torch.set_num_threads(threads_before)  # main() is also called in-process (tests)


def _run(args, only) -> int:
    from benchmarks.runner import DataPaths, run_benchmark

    overrides = {}
    tradeoff = (("epochs", args.tradeoff_epochs), ("width", args.tradeoff_width), ("recipe", args.tradeoff_recipe),
                ("batch_size", args.tradeoff_batch),
                ("synthetic_train", args.tradeoff_train_scenes), ("synthetic_test", args.tradeoff_test_scenes),
                ("datasets", args.tradeoff_datasets), ("models", args.tradeoff_models), ("init", args.tradeoff_init),
                ("background", args.tradeoff_background))
    if any(v for _, v in tradeoff):
        overrides["tradeoff"] = {k: v for k, v in tradeoff if v}
    preset = "tiny" if args.tiny else "quick" if args.quick else "full"
    try:
        results = run_benchmark(args.output, preset=preset, device=args.device, only=only, compile=args.compile,
                                overrides=overrides, work_dir=args.work_dir,
                                command=" ".join(["tools/benchmark.py"] + args.argv),
                                paths=DataPaths(configs=CONFIGS, coco128=args.coco128, demo_weights=args.demo_weights))
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {os.path.join(args.output, 'benchmark.json')}, benchmark.md and "
          f"{len(results.get('plots', {}))} plots in {results['total_seconds']:.0f} s")
    for t in results.get("targets", []):
        print(f"  [{t['status']}] {t['target']}: {t['value'] if t['value'] is None else round(t['value'], 3)} "
              f"(needs {t['comparison']} {t['threshold']})")
    failed = [s for s in only if "error" in results.get(s, {})]
    if failed:
        print(f"error: section(s) failed: {', '.join(failed)} (see benchmark.json)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
