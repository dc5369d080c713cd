#!/usr/bin/env python
"""The fusion table of docs/benchmarks.md: first stage alone, each fusion, and the fitted fusion, on a test half.

    tools/fusion_table.py --detections DETS.json --annotations ANN.json --images DIR \\
        --classifier-weights CLF.pth --output DIR [--noisy-seed 1]

The images of ANN.json are split in two halves by id (fit half, test half); tools/fit_fusion.py fits on the
first, tools/infer.py evaluates every rule on the second. DETS.json is the first stage's COCO results (e.g.
OUTPUT/detector_predictions.json of a tools/infer.py run); with --noisy-seed the first stage is instead a noisy
copy of the ground truth (crop_classifier.detectors.noisy). Prints a markdown table; writes DIR/table.json.
"""
import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from crop_classifier.detectors.noisy import noisy_detections  # noqa: E402
from crop_classifier.utils.io import atomic_save_json  # noqa: E402


def _half(coco: dict, ids: set) -> dict:
    return {**coco, "images": [i for i in coco["images"] if i["id"] in ids],
            "annotations": [a for a in coco["annotations"] if a["image_id"] in ids]}


def _run(cmd) -> None:
    print("$", " ".join(map(str, cmd)), flush=True)
    subprocess.run([sys.executable, *map(str, cmd)], check=True, stdout=subprocess.DEVNULL)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--detections")
    p.add_argument("--noisy-seed", type=int)
    p.add_argument("--annotations", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--classifier-weights", required=True)
    p.add_argument("--output", required=True)
    args = p.parse_args(argv)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    coco = json.loads(Path(args.annotations).read_text())
    ids = sorted(i["id"] for i in coco["images"])
    fit_ids, test_ids = set(ids[: len(ids) // 2]), set(ids[len(ids) // 2:])
    atomic_save_json(out / "fit.json", _half(coco, fit_ids))
    atomic_save_json(out / "test.json", _half(coco, test_ids))
    dets = args.detections
    if args.noisy_seed is not None:
        dets = out / "noisy.json"
        atomic_save_json(dets, noisy_detections(coco, seed=args.noisy_seed))
    common = ["--detector", f"detections:{dets}", "--categories", args.annotations, "--classifier-weights",
              args.classifier_weights, "--input", args.images, "--no-progress"]
    _run(["tools/fit_fusion.py", *common, "--annotations", out / "fit.json", "--output", out / "fusion.json"])
    rows = {}
    for name, extra in (("rescore", ["--fusion", "rescore"]), ("replace", ["--fusion", "replace"]),
                        ("replace, class map *=*", ["--fusion", "replace", "--class-map", "*=*"]),
                        ("filter", ["--fusion", "filter"]), ("fitted", ["--fusion-file", out / "fusion.json"])):
        run_dir = out / name.replace(" ", "_").replace(",", "").replace("*=*", "all")
        _run(["tools/infer.py", *common, "--eval", out / "test.json", "--output", run_dir, "--vis-limit", "0", *extra])
        ev = json.loads((run_dir / "eval.json").read_text())
        rows.setdefault("first stage alone", ev["detector_only"]["AP"])
        rows[name] = ev["two_stage"]["AP"]
    fitted = json.loads((out / "fusion.json").read_text())["validation"]
    atomic_save_json(out / "table.json", {"test_AP": rows, "fit_split": fitted})
    print(f"\n| rule (test half, {len(test_ids)} images) | AP | vs first stage |\n|---|---|---|")
    for name, ap in rows.items():
        print(f"| {name} | {ap:.4f} | {ap - rows['first stage alone']:+.4f} |")
    print(f"\nfitted on {len(fit_ids)} images: {fitted['fitted']['rule']} (fit-half AP {fitted['fitted']['AP']:.4f}, "
          f"detector alone {fitted['detector_only']['AP']:.4f})")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
