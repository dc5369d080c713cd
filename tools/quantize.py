#!/usr/bin/env python
"""int8 for CPU: static post-training quantization of a trained classifier.

    tools/quantize.py --weights CKPT --output INT8.pth|INT8.onnx (--calib-dataset NAME ... | --config-file F)
                      [--format fx|onnx|openvino] [--calib-crops N] [--observer histogram|minmax]
                      [--eval-dataset NAME ...]

--format (default: from --output's suffix, .pth -> fx, .onnx -> onnx): fx is PyTorch FX (x86 backend) into
an int8 checkpoint (.pth, --backend torch); onnx is ONNX Runtime's static QDQ quantization (per-channel) of
the exported graph into an int8 .onnx; openvino is NNCF's post-training quantization of that graph, for
OpenVINO. An int8 .onnx runs on OpenVINO by default (the fastest int8 form measured here, docs/deploy.md)
or ONNX Runtime (--backend onnxruntime); load_classifier reports it as int8.

Calibrates on N training crops (un-augmented, cut like inference crops) of the dataset(s) the classifier
was trained on: --calib-dataset names them (dataset names as in configs, e.g.
synthetic:datasets/cpu_synthetic/train:600:0), or --config-file takes the config's DATASETS.TRAIN and
MIN_BOX_SIZE_TRAIN. Writes a checkpoint whose meta says "quantized": "x86-int8" (atomically); it runs on
CPU only (tools/infer.py and crop_classifier.deploy.load_classifier read it). With --eval-dataset (or
--config-file: its DATASETS.TEST / MIN_BOX_SIZE_TEST, add --eval) the fp32 and int8 top-1 on those held-out
crops are printed and recorded in the int8 meta ("quantization" -> "eval").
A routed checkpoint (arch auto) is quantized per route: --output out.pth writes out.v3_79.pth, out.v3_151.pth,
out.v3_299.pth; tools/infer.py --classifier auto --classifier-weights out.pth --precision int8 runs them routed.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    from crop_classifier.utils.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--weights", required=True, metavar="CKPT", help="an fp32 checkpoint (.pth/.safetensors)")
    p.add_argument("--output", required=True, metavar="FILE", help="the int8 file to write (.pth for fx, .onnx)")
    p.add_argument("--format", choices=("fx", "onnx", "openvino"), default=None,
                   help="quantizer (default: fx for a .pth output, onnx for a .onnx one); see above")
    p.add_argument("--calib-dataset", action="append", default=[], metavar="NAME",
                   help="a training dataset name (repeatable)")
    p.add_argument("--config-file", metavar="FILE", help="take DATASETS.TRAIN / MIN_BOX_SIZE_TRAIN from this config")
    p.add_argument("--calib-crops", type=int, default=512, metavar="N", help="calibration crops")
    p.add_argument("--calib-min-size", type=float, default=None, metavar="PX",
                   help="skip boxes smaller than this (default: the config's MIN_BOX_SIZE_TRAIN, else 0)")
    p.add_argument("--observer", default="histogram", choices=("histogram", "minmax"),
                   help="activation range observer (histogram: the x86 default; minmax is faster)")
    p.add_argument("--eval-dataset", action="append", default=[], metavar="NAME",
                   help="held-out dataset to compare fp32 and int8 top-1 on (repeatable)")
    p.add_argument("--eval", action="store_true", help="with --config-file: evaluate on its DATASETS.TEST")
    return p.parse_args(argv)


def eval_datasets(args):
    """(names, min box size) of the held-out comparison, or (None, 0) when none was asked for. The crops are
    tools/evaluate.py's: with --config-file, its MIN_BOX_SIZE_TEST applies to --eval-dataset too."""
    if not args.eval_dataset and not (args.eval and args.config_file):
        return None, 0.0
    min_size, names = 0.0, list(args.eval_dataset)
    if args.config_file:
        from crop_classifier.config import load_tool_config

        cfg = load_tool_config(args.config_file, [], need_imagenet_weights=False)
        min_size, names = float(cfg.DATASETS.MIN_BOX_SIZE_TEST), names or list(cfg.DATASETS.TEST)
    return names, min_size


def calibration_options(args):
    from crop_classifier.deploy.quantize import CalibrationOptions
    from crop_classifier.errors import UsageError

    datasets, min_size = list(args.calib_dataset), 0.0
    if args.config_file:
        from crop_classifier.config import load_tool_config

        cfg = load_tool_config(args.config_file, [], need_imagenet_weights=False)
        datasets = datasets or list(cfg.DATASETS.TRAIN)
        min_size = float(cfg.DATASETS.MIN_BOX_SIZE_TRAIN)
    if not datasets:
        raise UsageError("name the calibration data: --calib-dataset NAME (the classifier's training dataset) "
                         "or --config-file F (its DATASETS.TRAIN)")
    if args.calib_min_size is not None:
        min_size = args.calib_min_size
    return CalibrationOptions(datasets=datasets, num_crops=args.calib_crops, min_size=min_size,
                              observer=args.observer)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # offline machines: no update check on import
    from crop_classifier.deploy.int8_onnx import quantize_checkpoint_onnx
    from crop_classifier.deploy.quantize import quantize_checkpoint_files
    from crop_classifier.errors import UsageError
    from crop_classifier.utils.cli import run_tool

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")

    def step() -> str:
        fmt = args.format or ("onnx" if args.output.endswith(".onnx") else "fx")
        if fmt == "fx" and not args.output.endswith((".pth", ".pt")):
            raise UsageError(f"--output {args.output}: FX int8 checkpoints are .pth files (quantized tensors, "
                             "no safetensors form); --format onnx|openvino writes a .onnx")
        if fmt != "fx" and not args.output.endswith(".onnx"):
            raise UsageError(f"--output {args.output}: --format {fmt} writes an int8 .onnx file")
        if args.calib_crops < 1:
            raise UsageError(f"--calib-crops {args.calib_crops}: must be >= 1")
        names, min_size = eval_datasets(args)
        if fmt != "fx":
            path = quantize_checkpoint_onnx(args.weights, args.output, calibration_options(args), fmt,
                                            eval_datasets=names, eval_min_size=min_size)
            return f"wrote {path} (int8 .onnx, {fmt})"
        paths = quantize_checkpoint_files(args.weights, args.output, calibration_options(args),
                                          eval_datasets=names, eval_min_size=min_size)
        return f"wrote {', '.join(map(str, paths))}" + (" (one int8 checkpoint per route)" if len(paths) > 1 else "")

    return run_tool(step)


if __name__ == "__main__":
    sys.exit(main())
