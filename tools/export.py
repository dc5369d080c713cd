#!/usr/bin/env python
"""Export a trained classifier's inference form to ONNX or TorchScript, with its meta inside the file.

    tools/export.py --weights CKPT --output FILE [--format onnx|torchscript] [--static-batch N] [--opset 17]

The exported model takes crops float [N, 3, S, S] RGB in [0, 1] and outputs "logits" and "probs" [N, K]
(normalisation with the checkpoint's mean/std and BN folding inside). The checkpoint meta (classes, input
size, mean/std, crop context/mode, arch, width) is embedded (ONNX metadata_props / TorchScript extra file
"crop_classifier_meta.json"), so the file alone runs the second stage (--backend onnxruntime|openvino|torch).
The batch is dynamic unless --static-batch N (TensorRT engines like static shapes). Written atomically.
"""
from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", required=True, metavar="CKPT", help="an fp32 checkpoint (.pth/.safetensors)")
    p.add_argument("--output", required=True, metavar="FILE", help="the file to write (.onnx, .pt)")
    p.add_argument("--format", default=None, choices=("onnx", "torchscript"),
                   help="default: from the --output suffix (.onnx -> onnx, else torchscript)")
    p.add_argument("--static-batch", type=int, default=None, metavar="N", help="fix the batch size to N")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17, default 17)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    from crop_classifier.deploy.export import ExportOptions, export_checkpoint
    from crop_classifier.deploy.runtimes import import_runtime
    from crop_classifier.utils.cli import run_tool

    fmt = args.format or ("onnx" if args.output.lower().endswith(".onnx") else "torchscript")

    def step() -> str:
        options = ExportOptions(format=fmt, opset=args.opset, static_batch=args.static_batch).check()
        if fmt == "onnx":
            import_runtime("onnx")
        path = export_checkpoint(args.weights, args.output, options)
        return f"wrote {path} ({fmt}, batch {'dynamic' if not args.static_batch else args.static_batch})"

    return run_tool(step)


if __name__ == "__main__":
    sys.exit(main())
