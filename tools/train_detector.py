#!/usr/bin/env python
"""Train a Detectron2 detector (DefaultTrainer) on COCO-format datasets.

    tools/train_detector.py --config-file configs/d2/demo_synthetic_R18_FPN.yaml --output-dir output/det \\
        --dataset demo_train=datasets/synthetic/train/annotations.json [KEY VALUE ...]

Writes OUTPUT_DIR/config.yaml (with the detector's class names, so tools/infer.py --detector-config can use
it as is) and OUTPUT_DIR/model_final.pth.

Several GPUs / machines go through Detectron2's ``launch``, with Detectron2's own flags:
    tools/train_detector.py --num-gpus 8 --config-file F --output-dir D --dataset ... SOLVER.IMS_PER_BATCH 16
    # two machines: on each, --num-machines 2 --machine-rank {0,1} --dist-url tcp://HOST0:PORT
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from detectron2.engine import launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from crop_classifier.d2.train import detector_cfg, parse_dataset_arg, train_detector  # noqa: E402
from crop_classifier.errors import UsageError  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--output-dir", required=True)
    p.add_argument("--dataset", action="append", default=[], metavar="NAME=ANN.json[:IMAGE_ROOT]",
                   help="register a COCO instances file under NAME (repeatable)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last_checkpoint")
    # The flags of Detectron2's tools (detectron2.engine.default_argument_parser), passed to launch().
    p.add_argument("--num-gpus", type=int, default=1, help="processes (GPUs) per machine")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0, help="this machine's rank, 0 .. num-machines - 1")
    p.add_argument("--dist-url", default="auto",
                   help="rendezvous of the process group: tcp://HOST:PORT of machine 0 (auto: a free local port)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides: KEY VALUE ...")
    args = p.parse_args(argv)
    try:
        datasets = {}
        for d in args.dataset:
            name, json_file, root = parse_dataset_arg(d)
            datasets[name] = (json_file, root)
        detector_cfg(args.config_file, args.output_dir, args.opts, datasets)  # errors before any process starts
    except (UsageError, ValueError, FileNotFoundError, KeyError) as e:
        print(f"error: {str(e).strip(chr(39))}", file=sys.stderr)
        return 2
    if args.num_gpus * args.num_machines > 1 and not torch.cuda.is_available():
        # DefaultTrainer's create_ddp_model always passes device_ids=[local rank], which DDP refuses on CPU.
        print("error: --num-gpus/--num-machines > 1 needs CUDA GPUs (Detectron2's DefaultTrainer runs DDP on GPUs "
              "only); on CPU train with one process", file=sys.stderr)
        return 2

    launch(worker, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args, datasets))
    return 0


def worker(args, datasets) -> None:
    """One training process; datasets are registered in each (Detectron2's catalogs are per process)."""
    cfg = detector_cfg(args.config_file, args.output_dir, args.opts, datasets)
    path = train_detector(cfg, resume=args.resume)
    if comm.is_main_process():
        print(path)


if __name__ == "__main__":
    sys.exit(main())
