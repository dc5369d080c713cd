#!/usr/bin/env python
"""``make demo``: the two-stage story offline on CPU: detector alone vs detector + crop classifier.

1. Held-out synthetic test scenes are generated when missing.
2. Models: a small Detectron2 Faster R-CNN on the 12 fine classes (configs/d2/demo_synthetic_R18_FPN.yaml;
   it sees the 512 px scenes at 256 px, as a real detector sees small objects) and a v3_79 crop classifier
   (configs/cpu/v3_79_w025_synthetic.yaml) that reads every box from the full-resolution scene.
   They come from demo_weights/ (written by `tools/demo.py --train --export demo_weights`; its manifest.json
   must name today's synthetic scene version), else they are trained here on the classifier config's
   training scenes (generated when missing), both at once, one CPU thread each (about 14 minutes).
   --train always trains (into --output); a second run reuses what the first one trained.
3. tools/infer.py --detector faster_rcnn --classifier v3_79 runs on the held-out scenes and prints COCO
   box mAP of the detector alone vs the two-stage output; pictures go to OUTPUT/infer/vis/.

Exit status 0 when the two-stage mAP beats the detector's on the fine classes. See docs/demo.md.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DET_CONFIG = ROOT / "configs" / "d2" / "demo_synthetic_R18_FPN.yaml"
CLS_CONFIG = ROOT / "configs" / "cpu" / "v3_79_w025_synthetic.yaml"
SHIPPED = ROOT / "demo_weights"
MANIFEST = "manifest.json"  # in SHIPPED: how the files were made and what they measured
TEST_SEED, TEST_SCENES = 7, 60
# The classifier config is sized for CPU already; the demo skips its end-of-training validation pass.
CLASSIFIER_OPTS = ["TEST.EVAL_PERIOD", "0"]
# rescore: every class hypothesis the detector emits (box, fine class c, score s) gets s x p_classifier(c),
# a product of the two experts; it re-ranks hypotheses and leaves the ranking alone where the classifier
# is undecided. (replace, "*=*": the classifier's argmax wins outright; it needs a strong classifier.)
FUSION = ["--fusion", "rescore"]
# Products of two probabilities run low: at infer's default 0.3, 22 of the 50 pictures show no box; from 0.15,
# 4 (infer's "picture(s) empty" line).
VIS = ["--vis-score-thresh", "0.15"]


def classifier_plan():
    """(training scenes spec, classifier's min box size) from the classifier config: one source of truth.

    The detector trains on the very scenes the classifier config names. (No size gate at inference:
    gated boxes would keep unscaled detector scores and outrank every re-scored box in the mAP ranking.)
    """
    from crop_classifier.config import load_config, parse_dataset_name

    cfg = load_config(CLS_CONFIG)
    spec = parse_dataset_name(cfg.DATASETS.TRAIN[0], key="DATASETS.TRAIN")
    if spec["kind"] != "synthetic":
        raise SystemExit(f"{CLS_CONFIG}: the demo needs synthetic training scenes, got {cfg.DATASETS.TRAIN[0]}")
    return spec, float(cfg.DATASETS.MIN_BOX_SIZE_TRAIN)


def log(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def scenes(out_dir: Path, n: int, seed: int, split: str) -> Path:
    from crop_classifier.data.synthetic import generate_scenes

    return Path(generate_scenes(out_dir, n, seed=seed, split_name=split))


def start(cmd, logfile: Path, threads: int) -> subprocess.Popen:
    log("$ " + " ".join(str(c) for c in cmd) + f"   (log: {logfile})")
    logfile.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    return subprocess.Popen([str(c) for c in cmd], cwd=ROOT, env=env, stdout=open(logfile, "w"), stderr=subprocess.STDOUT)


def wait_all(jobs) -> None:
    failed = []
    try:
        for name, proc, logfile in jobs:
            if proc.wait() != 0:
                failed.append((name, logfile))
    finally:  # interrupted (Ctrl-C): no training left running behind the demo's back
        for _, proc, _ in jobs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait()
    for name, logfile in failed:
        tail = logfile.read_text().splitlines()[-25:]
        log(f"{name} training failed (exit status); last lines of {logfile}:\n" + "\n".join(tail))
    if failed:
        raise SystemExit(3)


def shipped_models():
    """(detector, classifier) weights from demo_weights/ when they were made for today's scenes, else None.

    The manifest records the synthetic generator's version the models were trained on: scenes drawn
    differently would make the comparison meaningless, so stale weights are not used.
    """
    from crop_classifier.data import synthetic

    files = [SHIPPED / "detector.pth", SHIPPED / "classifier.pth"]
    if not all(p.is_file() for p in files):
        return None
    try:
        manifest = json.loads((SHIPPED / MANIFEST).read_text())
        version = manifest["synthetic_version"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        log(f"    {SHIPPED / MANIFEST} is missing or unreadable ({e}); training the models here instead")
        return None
    if version != synthetic.VERSION:
        log(f"    {SHIPPED} was made for synthetic scenes version {version}, these are version "
            f"{synthetic.VERSION}; training the models here instead")
        return None
    return files


def models(args, out: Path):
    """(detector config, detector weights, classifier weights), trained here when needed (the training scenes
    are generated first, when missing)."""
    shipped = None if args.train else shipped_models()
    if shipped:
        log(f"2/3 models: the shipped ones in {SHIPPED} (--train trains them here instead)")
        return DET_CONFIG, shipped[0], shipped[1]
    log(f"    training scenes: {args.train_dir} ({args.train_scenes}, generated once, then reused)")
    train_ann = scenes(ROOT / args.train_dir, args.train_scenes, args.train_seed, "train")
    det_dir, cls_dir = out / "detector", out / "classifier"
    py = sys.executable
    threads = max(1, (os.cpu_count() or 2) // 2)
    todo = []  # (name, command, log file): both commands are built before either starts
    if (det_dir / "model_final.pth").is_file():
        log(f"2/3 detector: reusing {det_dir / 'model_final.pth'}")
    else:
        extra = ["SOLVER.MAX_ITER", str(args.detector_iters)] if args.detector_iters else []
        log("2/3 detector: training a small Faster R-CNN on the fine classes (Detectron2 DefaultTrainer)")
        todo.append(("detector", [py, "tools/train_detector.py", "--config-file", DET_CONFIG, "--output-dir", det_dir,
                                  "--dataset", f"demo_synthetic_train={train_ann}", *extra], out / "detector.log"))
    if (cls_dir / "model_final.pth").is_file():
        log(f"2/3 classifier: reusing {cls_dir / 'model_final.pth'}")
    else:
        extra = ["SOLVER.MAX_EPOCHS", str(args.classifier_epochs)] if args.classifier_epochs else []
        data = ["DATASETS.TRAIN", f"['synthetic:{args.train_dir}:{args.train_scenes}:{args.train_seed}']",
                "DATASETS.TEST", "[]"]
        log("2/3 classifier: training v3_79 (width 0.25) on crops of the same scenes (tools/train.py)")
        todo.append(("classifier", [py, "tools/train.py", "--config-file", CLS_CONFIG, "--output-dir", cls_dir,
                                    "--no-progress", *data, *CLASSIFIER_OPTS, *extra], out / "classifier.log"))
    jobs = []
    try:
        for name, cmd, logfile in todo:
            jobs.append((name, start(cmd, logfile, threads), logfile))
    finally:
        wait_all(jobs)
    return det_dir / "config.yaml", det_dir / "model_final.pth", cls_dir / "model_final.pth"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/demo")
    p.add_argument("--train", action="store_true", help="train both models here even when demo_weights/ has them")
    p.add_argument("--detector-iters", type=int, help="override SOLVER.MAX_ITER of the detector")
    p.add_argument("--classifier-epochs", type=int, help="override SOLVER.MAX_EPOCHS of the classifier")
    p.add_argument("--data-dir", help="scenes go to DATA_DIR/train and DATA_DIR/demo_test (default: the training "
                   "scenes the classifier config names, test scenes beside them)")
    p.add_argument("--train-scenes", type=int, help="default: the classifier config's count")
    p.add_argument("--test-scenes", type=int, default=TEST_SCENES)
    p.add_argument("--video", action="store_true", help="the video part instead: a synthetic moving scene, tracked and "
                   "classified at each object's best views (OUTPUT/video/; needs demo_weights/)")
    p.add_argument("--export", metavar="DIR", help="after the run, write the models it used as small float16 files "
                   "DIR/detector.pth and DIR/classifier.pth (what demo_weights/ ships)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    if args.video:
        return video_demo(ROOT / args.output / "video")
    t0 = time.time()
    out = ROOT / args.output
    spec, _ = classifier_plan()
    args.train_dir = Path(args.data_dir) / "train" if args.data_dir else Path(spec["dir"])
    args.train_scenes = args.train_scenes or spec["num_images"]
    args.train_seed = spec["seed"]

    log("1/3 held-out synthetic test scenes (generated once, then reused)")
    test_ann = scenes(ROOT / args.train_dir.parent / "demo_test", args.test_scenes, TEST_SEED, "test")
    from crop_classifier.coco_io import load_coco

    classes = load_coco(test_ann).class_names
    log(f"    {len(classes)} fine classes: {', '.join(classes)}")

    det_cfg, det_w, cls_w = models(args, out)
    log(f"    models ready after {time.time() - t0:.0f} s")

    log("3/3 two-stage inference on the held-out scenes")
    infer_dir = out / "infer"
    cmd = [sys.executable, "tools/infer.py", "--detector", "faster_rcnn", "--classifier", "v3_79",
           "--detector-config", det_cfg, "--detector-weights", det_w, "--classifier-weights", cls_w,
           "--input", test_ann.parent / "images", "--output", infer_dir, "--eval", test_ann, *FUSION,
           *VIS, "--no-progress", "--device", "cpu"]
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)
    ev = json.loads((infer_dir / "eval.json").read_text())
    det_ap, two_ap = ev["detector_only"]["AP"], ev["two_stage"]["AP"]
    log(f"fine-class COCO box mAP: detector alone {det_ap:.4f}, two-stage {two_ap:.4f} ({two_ap - det_ap:+.4f}); "
        f"classifier top-1 on ground-truth crops {ev['crop_top1']}")
    by_size = {k: "/".join(f"{ev[k][a]:.3f}" for a in ("APs", "APm", "APl")) for k in ("detector_only", "two_stage")}
    log(f"    by object size (COCO small < 32 px < medium < 96 px < large): detector {by_size['detector_only']}, "
        f"two-stage {by_size['two_stage']}")
    det_m, two_m = ev["detector_only"].get("matches"), ev["two_stage"].get("matches")
    if det_m and two_m:
        log(f"    at score >= {det_m['score']:g}: false positives {det_m['fp']} -> {two_m['fp']}, "
            f"true positives {det_m['tp']} -> {two_m['tp']}")
    ceil = ev.get("background_ceiling")
    if ceil:
        log(f"    a perfect background class (the {ceil['removed']} boxes on no object removed) would reach "
            f"{ceil['AP']:.4f} ({ceil['AP'] - two_ap:+.4f})")
    log(f"pictures: {infer_dir / 'vis'}   total time {time.time() - t0:.0f} s")
    if args.export:
        export(Path(args.export), det_w, cls_w, ev, argv)
    return 0 if two_ap > det_ap else 1


def video_demo(out: Path) -> int:
    """A moving synthetic scene (objects approach, recede, enter, leave, occlude), tracked; each object is
    classified on first sight and when its view grew by 20 %, and its views vote by resolution."""
    from benchmarks.video import load_demo_models
    from crop_classifier.data.synthetic_video import MovingScene, MovingSceneOptions, write_video
    from crop_classifier.video import RunOptions, TrackerOptions, TrackOptions, run_tracking

    if shipped_models() is None:
        log(f"the video demo needs the shipped models in {SHIPPED} (made for today's scenes)")
        return 3
    log("1/2 a synthetic moving scene (120 frames, 512 px)")
    video = write_video(MovingScene(0, seed=TEST_SEED, options=MovingSceneOptions(num_frames=120, num_objects=10)),
                        out / "scene.mp4")
    log("2/2 detector + tracker + crop classifier at each object's best views")
    first, second = load_demo_models("cpu", SHIPPED, DET_CONFIG)
    options = RunOptions(track=TrackOptions(tracker=TrackerOptions(min_score=0.1)))
    summary = run_tracking(str(video), first, second, options, out / "track")
    t = summary["totals"]
    log(f"{t['frames']} frames, {t['tracks']} tracks, {t['classifier_calls']} classifier calls "
        f"({t['classifier_calls_per_frame']:.2f} per frame, {t['boxes']} boxes seen)")
    log(f"annotated video: {out / 'track' / 'vis' / 'scene.mp4'}; ground truth: {video}.gt.json")
    return 0 if not summary["failed"] else 1


def export(dest: Path, det_w: Path, cls_w: Path, ev: dict, argv) -> None:
    """Model weights only (no optimizer state), in float16: loading casts them back to float32; and a
    manifest of how they were made (scene version, configs, command) and what this run measured."""
    import torch

    from crop_classifier.data import synthetic
    from crop_classifier.models import load_checkpoint
    from crop_classifier.utils.io import atomic_save_json, atomic_torch_save

    dest.mkdir(parents=True, exist_ok=True)
    det = torch.load(det_w, map_location="cpu", weights_only=True)["model"]
    atomic_torch_save(dest / "detector.pth", {"model": {k: v.half() if v.is_floating_point() else v for k, v in det.items()}})
    ckpt = load_checkpoint(cls_w)
    sd = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    atomic_torch_save(dest / "classifier.pth", {"model": sd, "meta": ckpt["meta"]})
    atomic_save_json(dest / MANIFEST, {
        "synthetic_version": synthetic.VERSION,
        "command": " ".join(["tools/demo.py", *argv]),
        "detector_config": str(DET_CONFIG.relative_to(ROOT)),
        "classifier_config": str(CLS_CONFIG.relative_to(ROOT)),
        "created": time.strftime("%Y-%m-%d"),
        "measured": {k: ev.get(k) for k in ("detector_only", "two_stage", "crop_top1", "crop_top1_boxes")},
    })
    for f in ("detector.pth", "classifier.pth", MANIFEST):
        log(f"exported {dest / f} ({(dest / f).stat().st_size / 2**20:.1f} MiB)")


if __name__ == "__main__":
    sys.exit(main())
