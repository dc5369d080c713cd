#!/usr/bin/env python
"""Export a trained classifier's inference form to ONNX or TorchScript, with its meta inside the file.

    tools/export.py --weights CKPT --output FILE [--format onnx|torchscript] [--static-batch N] [--opset 17]

The exported model takes crops float [N, 3, S, S] RGB in [0, 1] and outputs "logits" and "probs" [N, K]
(normalisation with the checkpoint's mean/std and BN folding inside). The checkpoint meta (classes, input
size, mean/std, crop context/mode, arch, width) is embedded (ONNX metadata_props / TorchScript extra file
"crop_classifier_meta.json"), so the file alone runs the second stage (--backend onnxruntime|openvino|torch).
The batch is dynamic unless --static-batch N (TensorRT engines like static shapes). Written atomically.

A routed checkpoint (arch auto) exports one file per route: --output out.onnx writes out.v3_79.onnx,
out.v3_151.onnx, out.v3_299.onnx, each with its route's meta and the set's routes and thresholds
(--route-thresholds 109,212 records others). tools/infer.py --classifier auto --classifier-weights out.onnx
(or the three files, comma-separated) runs them as the routed classifier.
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    from crop_classifier.utils.cli import HelpFormatter

    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--weights", required=True, metavar="CKPT", help="an fp32 checkpoint (.pth/.safetensors)")
    p.add_argument("--output", required=True, metavar="FILE", help="the file to write (.onnx, .pt)")
    p.add_argument("--format", default=None, choices=("onnx", "torchscript"),
                   help="default: from the --output suffix (.onnx -> onnx, else torchscript)")
    p.add_argument("--static-batch", type=int, default=None, metavar="N",
                   help="fix the batch size to N (default: a dynamic batch)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    p.add_argument("--route-thresholds", metavar="PX,PX", help="a routed (auto) checkpoint: the native sides "
                   "between its routes to record (default: the checkpoint's)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from crop_classifier.deploy.export import ExportOptions, export_checkpoint_files
    from crop_classifier.models.routing import parse_thresholds
    from crop_classifier.deploy.runtimes import import_runtime
    from crop_classifier.utils.cli import run_tool

    fmt = args.format or ("onnx" if args.output.lower().endswith(".onnx") else "torchscript")

    def step() -> str:
        options = ExportOptions(format=fmt, opset=args.opset, static_batch=args.static_batch).check()
        if fmt == "onnx":
            import_runtime("onnx")
        thresholds = parse_thresholds(args.route_thresholds) if args.route_thresholds is not None else None
        paths = export_checkpoint_files(args.weights, args.output, options, thresholds=thresholds)
        return (f"wrote {', '.join(map(str, paths))} ({fmt}, batch "
                f"{'dynamic' if not args.static_batch else args.static_batch}"
                f"{', one file per route' if len(paths) > 1 else ''})")

    return run_tool(step)


if __name__ == "__main__":
    sys.exit(main())
