#!/usr/bin/env python
"""Fit how much to trust the first stage and the classifier, per class, on a validation split.

    tools/fit_fusion.py --detector SPEC --classifier-weights CLF.pth --input VAL_IMAGES/ \\
        --annotations VAL.json --output FUSION.json [--categories ANN.json] [--device cpu] [--no-progress]

The first stage and the classifier run once on the images the annotations know; then a blend between the
detector's score and the classifier's probability (per class, shrunk towards a shared value where a class has
few boxes) and, where class sets hold several classes, a margin the classifier must win by to re-label, are
chosen to maximise the split's COCO box AP. Trusting the detector alone is always a candidate, so the fitted
fusion is never below the first stage on this split. FUSION.json records what it was fitted for and the
split's AP of the detector alone, the default fusion and the fitted one; apply it with
`tools/infer.py --fusion-file FUSION.json`, `SecondStageConfig(fusion_file=...)` or the Detectron2 key
MODEL.CROP_CLASSIFIER.FUSION_FILE (it is refused for another classifier or first stage).
Exit status: 0 written, 1 written but some inputs could not be read (listed), 2 usage error.
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crop_classifier.errors import (CheckpointError, ParameterError, UsageError, WeightsUnavailableError,  # noqa: E402
                                    error_line)
from crop_classifier.inference.fit import Evaluator, collect, fit, fitted_for, split_records  # noqa: E402
from crop_classifier.inference.runner import InferOptions, _device, build_stages  # noqa: E402
from crop_classifier.second_stage import add_arguments, flag_error  # noqa: E402
from crop_classifier.utils.cli import HelpFormatter  # noqa: E402
from crop_classifier.coco_io import load_coco  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--detector", required=True, help="the first stage, as tools/infer.py --detector takes it")
    p.add_argument("--detector-config", help="Detectron2 first stage: a YAML of your own")
    p.add_argument("--detector-weights", help="local detector weights")
    p.add_argument("--detector-opts", nargs="*", default=[], metavar="KEY VALUE", help="first-stage overrides")
    p.add_argument("--detector-format", choices=("yolov8", "yolov5", "boxes"),
                   help="an onnx: detector's output layout (default: read from the graph)")
    p.add_argument("--categories", help="COCO annotations naming the detector's classes (detections: files)")
    p.add_argument("--classifier", default=None, help="architecture the checkpoint must have (default: any)")
    p.add_argument("--classifier-weights", required=True, help="the classifier the fusion is fitted for")
    p.add_argument("--input", nargs="+", required=True, help="validation images (files, folders, globs)")
    p.add_argument("--annotations", required=True, help="COCO annotations of the validation images")
    p.add_argument("--output", required=True, help="the fitted fusion, FUSION.json")
    p.add_argument("--score-thresh", type=float, help="detector score threshold")
    p.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=4, help="images per detector batch")
    p.add_argument("--no-progress", action="store_true")
    add_arguments(p)  # the class map, gates and the rest: the fit is for the stage they describe
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        opts = InferOptions.from_namespace(args, output=os.path.dirname(args.output) or ".", eval=args.annotations)
        if opts.stage.fusion.fusion_file:
            raise UsageError("--fusion-file: fit_fusion fits a new one; leave it out")
        device = _device(args.device)
        first, second, ref_cats = build_stages(opts, device)
        records, bad, skipped = split_records(args.input, args.annotations)
        if not records:
            raise UsageError(f"--input: no image of {args.annotations} found among the inputs")
        answers = collect(first, second, records, args.batch_size, progress=not args.no_progress)
        fused, report = fit(Evaluator(second, answers, load_coco(args.annotations).coco, ref_cats, first.class_names))
    except ParameterError as e:
        print(f"error: {flag_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: nothing written", file=sys.stderr)
        return 130
    except (UsageError, WeightsUnavailableError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2
    fused.fitted_for = fitted_for(second, args.detector, args.classifier_weights)
    fused.validation = report
    fused.save(args.output)
    print(f"validation split: {report['images']} images ({args.annotations})"
          + (f"; {skipped} other input(s) skipped (not in it)" if skipped else ""))
    print(f"  {'':28}{'AP':>8}{'AP50':>8}{'AP75':>8}")
    rows = [("detector alone", report["detector_only"]),
            (f"default fusion ({report['default_fusion']['rule']})", report["default_fusion"]),
            *[(c["rule"], c) for c in report["candidates"][1:]]]
    for label, r in rows:
        print(f"  {label:28}" + "".join(f"{r[k]:8.4f}" for k in ("AP", "AP50", "AP75")))
    print(f"fitted: {report['fitted']['rule']} (AP {report['fitted']['AP']:.4f}); written {args.output}")
    for b in bad:
        print(f"warning: bad input {b.path}: {b.reason}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
