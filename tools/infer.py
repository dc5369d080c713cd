#!/usr/bin/env python
"""Two-stage inference: a detector's boxes, re-classified by a crop classifier at full resolution.

    tools/infer.py --detector faster_rcnn --classifier v3_79 --classifier-weights clf.pth \\
        --input images/ video.mp4 "more/*.jpg" --output out/ [--eval annotations.json]

First stages (--detector): faster_rcnn (Detectron2 model zoo COCO Faster R-CNN R50-FPN, or your own
config with --detector-config), torchvision:NAME (a torchvision detection model), onnx:FILE.onnx (an exported
detector: YOLOv8/YOLO11, YOLOv5 or boxes/scores/labels outputs), ultralytics:FILE.pt, detections:FILE.json
(any detector's COCO results), gt:ANNOTATIONS.json (ground-truth boxes, to evaluate the classifier alone).
--fusion-file FUSION.json applies a fusion fitted by tools/fit_fusion.py for this classifier and first stage.
--classifier auto runs a routed classifier: each box is cropped at the Section 9 stem that fits its native
size (a routed checkpoint, or --classifier-weights a.pth,b.pth,c.pth: one single-stem file per stem);
--route-thresholds 109,212 moves the boundaries; summary.json lists the crops each route took.
Writes OUTPUT/predictions.json (COCO results + file_name, detector class/score, classifier score),
OUTPUT/detector_predictions.json, OUTPUT/vis/*.jpg, OUTPUT/summary.json and, with --eval, OUTPUT/eval.json.
Several processes: `torchrun --nproc_per_node N tools/infer.py ...` (one rank per GPU), or, for schedulers
without torchrun, one job per `--num-shards K --shard-id I`; each takes a contiguous part of the inputs and
the merged OUTPUT/predictions.json equals a single process's (docs/distributed.md).
Each finished image is saved at once in OUTPUT/parts/ (atomically); after a stop, the same command with
--resume processes only the rest, and the final outputs equal an uninterrupted run's.
Exit status: 0 ok, 1 some inputs could not be read or some detections/annotation entries were malformed
(listed in the summary and OUTPUT/summary.json; the rest were processed), 2 usage error.
"""
import argparse
import logging
import os
import shlex
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from crop_classifier.errors import CheckpointError, UsageError, WeightsUnavailableError  # noqa: E402
from crop_classifier.inference import InferenceRun, InferOptions, format_summary, route_line, run  # noqa: E402
from crop_classifier.inference.inputs import INPUT_HELP  # noqa: E402
from crop_classifier.deploy.loader import ALL_PRECISIONS, BACKENDS  # noqa: E402
from crop_classifier.models.routing import parse_thresholds  # noqa: E402
from crop_classifier.errors import ParameterError, error_line  # noqa: E402
from crop_classifier.second_stage import add_arguments, flag_error  # noqa: E402
from crop_classifier.utils.cli import HelpFormatter  # noqa: E402
from crop_classifier.video import VOTE_MODES, ReinferOptions, TrackerOptions, TrackOptions  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help=INPUT_HELP)
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--detector", default="faster_rcnn",
                   help="faster_rcnn | torchvision:NAME (a torchvision detection builder, e.g. "
                   "fasterrcnn_resnet50_fpn_v2; builder arguments via --detector-opts, e.g. min_size 512) | "
                   "onnx:FILE.onnx (an exported detector: YOLOv8/YOLO11, YOLOv5 or boxes/scores/labels outputs) | "
                   "ultralytics:FILE.pt (needs the ultralytics extra) | detections:FILE.json | gt:ANNOTATIONS.json "
                   "(default: faster_rcnn)")
    p.add_argument("--detector-format", choices=("yolov8", "yolov5", "boxes"),
                   help="onnx: detectors: the output layout (default: read from the graph)")
    p.add_argument("--detector-config", help="a Detectron2 YAML of your own (default: the model zoo's "
                   "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml)")
    p.add_argument("--detector-weights", help="local detector weights (default: MODEL.WEIGHTS of the config; "
                   "the model zoo URL needs a network)")
    p.add_argument("--detector-opts", nargs="*", default=[], metavar="KEY VALUE",
                   help="Detectron2 config overrides, e.g. MODEL.ROI_HEADS.NMS_THRESH_TEST 0.6")
    p.add_argument("--classifier", default="v3_79", help="architecture the checkpoint must have (v3_79, v3_151, "
                   "v3_299), or auto: a routed classifier, each crop at the stem that fits its native size")
    p.add_argument("--classifier-weights", help="crop_classifier checkpoint; its metadata decides classes, input "
                   "size and crop semantics (required). With --classifier auto: a routed checkpoint, the name "
                   "tools/export.py got for one (its per-route files), or single-stem files of distinct stems "
                   "comma-separated (a.pth,b.pth,c.pth), run as one routed set")
    p.add_argument("--route-thresholds", metavar="PX,PX", help="--classifier auto: the native box sides (px, "
                   "context margin included) between the routes, e.g. 109,212 (default: the checkpoint's)")
    p.add_argument("--score-thresh", type=float, help="detector score threshold (every first stage; default: its own, 0.25 for onnx:)")
    p.add_argument("--batch-size", type=int, default=4, help="images per detector batch")
    p.add_argument("--device", help="cuda, cpu, ... (default: cuda when available)")
    p.add_argument("--precision", default=None, choices=ALL_PRECISIONS,
                   help="classifier precision. Default: auto, following the hardware: bf16 on a CPU with native "
                   "bf16 (AVX-512 BF16/AMX; OpenVINO, after a check that bf16 keeps the decisions), fp32 elsewhere; "
                   "summary.json's classifier_form says which ran and why (docs/deploy.md). fp32: exact everywhere; "
                   "bf16 (CUDA, or a CPU with AVX-512 BF16/AMX); fp16 (CUDA); int8 (an int8 file from "
                   "tools/quantize.py, CPU)")
    p.add_argument("--cpu-streams", type=int, default=1, help="split each batch of crops over N parallel "
                   "single-thread streams (CPU); 1 (default): one stream on all threads, as fast as N streams for "
                   "ONNX Runtime/OpenVINO here and with the lower latency (docs/benchmarks.md, deploy)")
    p.add_argument("--backend", choices=BACKENDS, help="classifier runtime: torch, onnxruntime or openvino (CPU; "
                   "the checkpoint is exported once and cached beside it; an exported .onnx/.pt file works too). "
                   "Default: the fastest installed fp32 CPU runtime (see docs/deploy.md), torch elsewhere")
    p.add_argument("--categories", help="COCO annotations whose categories name/number the classes "
                   "(needed by detections: files without category_name)")
    p.add_argument("--eval", metavar="ANNOTATIONS.json",
                   help="COCO box mAP of the detector alone vs the two-stage output, and crop top-1")
    p.add_argument("--vis-limit", type=int, default=50, help="pictures to write to OUTPUT/vis (0: none)")
    p.add_argument("--vis-score-thresh", type=float, default=0.3, help="boxes drawn from this fused score up")
    p.add_argument("--video-stride", type=int, default=1, help="every Nth video frame")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--num-shards", type=int, default=0, help="split the inputs into K shards (default: the "
                   "torchrun world size, else 1); the last shard to finish merges the outputs")
    p.add_argument("--shard-id", type=int, default=0, help="this job's shard, 0 .. K-1")
    add_arguments(p)  # the second stage's knobs: one flag per SecondStageConfig field
    t = p.add_argument_group("video and streams (--track)")
    t.add_argument("--track", action="store_true", help="inputs are videos, image folders in frame order, camera "
                   "indices (0) or stream URLs (rtsp://, http://): track objects and classify each at its best views; "
                   "writes results.json (per frame, with track_id), tracks.json, vis/NAME.mp4")
    t.add_argument("--reinfer-area", type=float, default=0.2,
                   help="classify a track again when its box area grew by this fraction since its last classified view")
    t.add_argument("--reinfer-interval", type=int, default=30, help="... or after this many frames (0: never)")
    t.add_argument("--reinfer-min-side", type=float, default=0.0,
                   help="never classify a view whose box short side is under this (px)")
    t.add_argument("--track-vote", default="weighted", choices=VOTE_MODES,
                   help="a track's class from its views: weighted by resolution (default), mean, last, geometric")
    t.add_argument("--track-min-score", type=float, default=0.3, help="detections below this score are not tracked")
    t.add_argument("--stream-retries", type=int, default=3, help="reopen a stalled stream this many times")
    p.add_argument("--resume", action="store_true", help="continue a stopped run in the same --output: images "
                   "with a result in OUTPUT/parts are not processed again (the options must be the same); "
                   "without it, earlier parts are discarded")
    return p.parse_args(argv)


def _track_options(args) -> TrackOptions:
    try:
        return TrackOptions(
            tracker=TrackerOptions(min_score=args.track_min_score),
            reinfer=ReinferOptions(reinfer_area=args.reinfer_area, reinfer_interval=args.reinfer_interval,
                                   min_side=args.reinfer_min_side, vote=args.track_vote))
    except ValueError as e:
        raise UsageError(str(e)) from None


def _run_tracked(opts: InferOptions, args) -> int:
    try:
        s = run(opts)
    except KeyboardInterrupt:  # while the models load: nothing written yet
        print("\ninterrupted before the first frame: nothing written", file=sys.stderr)
        return 130
    except (UsageError, WeightsUnavailableError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2
    t = s["totals"]
    print(f"frames: {t['frames']}  boxes: {t['boxes']}  tracks: {t['tracks']}  classifier calls: "
          f"{t['classifier_calls']} ({t['classifier_calls_per_frame']:.2f} per frame)  {t['frames_per_s']:.2f} frames/s")
    if t.get("route_crops"):
        print(route_line(t["route_crops"]))
    print(f"outputs: {args.output}/results.json, tracks.json, summary.json" + (", vis/" if args.vis_limit else ""))
    for line in s.get("warnings", []):  # an empty video or results: say why
        print(f"note: {line}")
    for f in s["failed"]:
        print(f"warning: {f['input']}: {f['reason']}", file=sys.stderr)
    if s["interrupted"]:
        print(f"interrupted: written {', '.join(s.get('written', []))}", file=sys.stderr)
        return 130
    return 1 if s["failed"] else 0


def _interrupted(run, argv) -> int:
    """Ctrl-C: say what is saved and how to continue; exit 130 like a shell."""
    saved = run.saved_images() if run is not None else 0
    args = list(sys.argv[1:] if argv is None else argv)
    cmd = " ".join(shlex.quote(a) for a in ["tools/infer.py", *args] + ([] if "--resume" in args else ["--resume"]))
    where = f" in {run.parts_dir}" if run is not None else ""
    print(f"\ninterrupted: {saved} image(s) saved{where}; continue with: {cmd}", file=sys.stderr)
    return 130


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if len(args.detector_opts) % 2:
        print("error: --detector-opts takes KEY VALUE pairs", file=sys.stderr)
        return 2
    try:
        thresholds = parse_thresholds(args.route_thresholds) if args.route_thresholds is not None else None
        if thresholds is not None and not thresholds:
            raise ValueError(f"--route-thresholds {args.route_thresholds!r}: expected comma-separated sizes in px, "
                             "e.g. 109,212")
    except ValueError as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2
    try:
        opts = InferOptions.from_namespace(args, route_thresholds=thresholds, track=None)
    except ParameterError as e:
        print(f"error: {flag_error(e)}", file=sys.stderr)
        return 2
    try:
        opts.track = _track_options(args) if args.track else None
    except UsageError as e:
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2
    if opts.track is not None:
        return _run_tracked(opts, args)
    run = None
    try:
        run = InferenceRun(opts)
        summary = run.run()
    except KeyboardInterrupt:
        return _interrupted(run, argv)
    except (UsageError, WeightsUnavailableError, CheckpointError, ValueError, FileNotFoundError) as e:
        # first-stage problems (offline weights, bad files) deserve one clear line too
        print(f"error: {error_line(e)}", file=sys.stderr)
        return 2
    if summary.get("merged") is False:  # a shard whose part is written; another process merges
        print(f"shard {summary['shard']} of {summary['num_shards']}: {summary['images']} images written to "
              f"{os.path.join(args.output, 'shards')}")
        return 0
    print(format_summary(summary))
    print(f"outputs: {os.path.join(args.output, 'predictions.json')}, summary.json"
          + (", eval.json" if args.eval else "") + (", vis/" if args.vis_limit else ""))
    problems = [f"bad input {b['path']}: {b['reason']}" for b in summary["bad_inputs"]]
    problems += [f"bad entry {e}" for e in summary.get("bad_entries", [])]
    for line in problems:  # also on stderr, so a batch job's log shows what was skipped
        print(f"warning: {line}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
