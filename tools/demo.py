#!/usr/bin/env python
"""``make demo``: the two-stage story offline on CPU: detector alone vs detector + crop classifier.

1. Synthetic scenes (training set and held-out test set) are generated when missing.
2. Models: a small Detectron2 Faster R-CNN on the 12 fine classes (configs/d2/demo_synthetic_R18_FPN.yaml;
   it sees the 512 px scenes at 256 px, as a real detector sees small objects) and a v3_79 crop classifier
   (configs/cpu/v3_79_w025_synthetic.yaml) that reads every box from the full-resolution scene.
   They come from demo_weights/ when that folder holds them (see demo_weights/README.md for the exact
   commands that made them), else they are trained here, both at once, one CPU thread each.
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
# By default the scenes the classifier config names (synthetic:datasets/synthetic/train:400:0), so both
# stages learn from one training set; the test scenes come from a seed and split neither model saw.
TRAIN_SEED, TEST_SEED = 0, 7
# Demo-sized classifier schedule on top of the config (see docs/demo.md for why these values).
CLASSIFIER_OPTS = ["TEST.EVAL_PERIOD", "0"]
# replace: class = the classifier's argmax among all 12 fine classes ("*=*"), score = detector x classifier.
FUSION = ["--fusion", "replace", "--class-map", "*=*"]


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
    for name, proc, logfile in jobs:
        if proc.wait() != 0:
            failed.append((name, logfile))
    for name, logfile in failed:
        tail = logfile.read_text().splitlines()[-25:]
        log(f"{name} training failed (exit status); last lines of {logfile}:\n" + "\n".join(tail))
    if failed:
        raise SystemExit(3)


def models(args, out: Path, train_ann: Path):
    """(detector config, detector weights, classifier weights), trained here when needed."""
    shipped = [SHIPPED / "detector.pth", SHIPPED / "classifier.pth"]
    if not args.train and all(p.is_file() for p in shipped):
        log(f"2/3 models: the shipped ones in {SHIPPED} (--train trains them here instead)")
        return DET_CONFIG, shipped[0], shipped[1]
    det_dir, cls_dir = out / "detector", out / "classifier"
    py = sys.executable
    threads = max(1, (os.cpu_count() or 2) // 2)
    jobs = []
    if (det_dir / "model_final.pth").is_file():
        log(f"2/3 detector: reusing {det_dir / 'model_final.pth'}")
    else:
        extra = ["SOLVER.MAX_ITER", str(args.detector_iters)] if args.detector_iters else []
        log("2/3 detector: training a small Faster R-CNN on the fine classes (Detectron2 DefaultTrainer)")
        jobs.append(("detector", start([py, "tools/train_detector.py", "--config-file", DET_CONFIG, "--output-dir", det_dir,
                                        "--dataset", f"demo_synthetic_train={train_ann}", *extra],
                                       out / "detector.log", threads), out / "detector.log"))
    if (cls_dir / "model_final.pth").is_file():
        log(f"2/3 classifier: reusing {cls_dir / 'model_final.pth'}")
    else:
        extra = ["SOLVER.MAX_EPOCHS", str(args.classifier_epochs)] if args.classifier_epochs else []
        log("2/3 classifier: training v3_79 (width 0.25) on crops of the same scenes (tools/train.py)")
        data = ["DATASETS.TRAIN", f"['synthetic:{args.data_dir / 'train'}:{args.train_scenes}:{TRAIN_SEED}']",
                "DATASETS.TEST", "[]"]
        jobs.append(("classifier", start([py, "tools/train.py", "--config-file", CLS_CONFIG, "--output-dir", cls_dir,
                                          "--no-progress", *data, *CLASSIFIER_OPTS, *extra], out / "classifier.log", threads),
                     out / "classifier.log"))
    wait_all(jobs)
    return det_dir / "config.yaml", det_dir / "model_final.pth", cls_dir / "model_final.pth"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="output/demo")
    p.add_argument("--train", action="store_true", help="train both models here even when demo_weights/ has them")
    p.add_argument("--detector-iters", type=int, help="override SOLVER.MAX_ITER of the detector")
    p.add_argument("--classifier-epochs", type=int, help="override SOLVER.MAX_EPOCHS of the classifier")
    p.add_argument("--data-dir", default="datasets/synthetic", help="scenes go to DATA_DIR/train and DATA_DIR/demo_test")
    p.add_argument("--train-scenes", type=int, default=400)
    p.add_argument("--test-scenes", type=int, default=60)
    args = p.parse_args(argv)
    t0 = time.time()
    out = ROOT / args.output
    args.data_dir = Path(args.data_dir)

    log("1/3 synthetic scenes (generated once, then reused)")
    train_ann = scenes(ROOT / args.data_dir / "train", args.train_scenes, TRAIN_SEED, "train")
    test_ann = scenes(ROOT / args.data_dir / "demo_test", args.test_scenes, TEST_SEED, "test")
    classes = [c["name"] for c in sorted(json.loads(train_ann.read_text())["categories"], key=lambda c: c["id"])]
    log(f"    {len(classes)} fine classes: {', '.join(classes)}")

    det_cfg, det_w, cls_w = models(args, out, train_ann)
    log(f"    models ready after {time.time() - t0:.0f} s")

    log("3/3 two-stage inference on the held-out scenes")
    infer_dir = out / "infer"
    cmd = [sys.executable, "tools/infer.py", "--detector", "faster_rcnn", "--classifier", "v3_79",
           "--detector-config", det_cfg, "--detector-weights", det_w, "--classifier-weights", cls_w,
           "--input", test_ann.parent / "images", "--output", infer_dir, "--eval", test_ann, *FUSION,
           "--no-progress", "--device", "cpu"]
    log("$ " + " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)
    ev = json.loads((infer_dir / "eval.json").read_text())
    det_ap, two_ap = ev["detector_only"]["AP"], ev["two_stage"]["AP"]
    log(f"fine-class COCO box mAP: detector alone {det_ap:.4f}, two-stage {two_ap:.4f} ({two_ap - det_ap:+.4f}); "
        f"classifier top-1 on ground-truth crops {ev['crop_top1']}")
    log(f"pictures: {infer_dir / 'vis'}   total time {time.time() - t0:.0f} s")
    return 0 if two_ap > det_ap else 1


if __name__ == "__main__":
    sys.exit(main())
