"""Batch inference over a folder with bad files in it, and long runs that stop and resume.

A tiny generated COCO set (a few good images + a corrupt JPEG, a zero-byte file and a text file with an
image extension), ground-truth boxes as the first stage and a width-0.125 classifier.
"""
import json
from pathlib import Path

import pytest
import torch

from robustness_helpers import encode, smooth_rgb
from tool_loader import load_tool

GOOD = [f"good{i}.jpg" for i in range(5)]
BAD = {"corrupt.jpg": "truncated", "empty.jpg": "empty", "notes.png": "not an image"}


def _infer():
    return load_tool("infer")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from crop_classifier.models import build_classifier, save_checkpoint
    from crop_classifier.models.weights import model_meta

    d = tmp_path_factory.mktemp("batch")
    img_dir = d / "images"
    img_dir.mkdir()
    images, anns = [], []
    for i, name in enumerate(GOOD):
        (img_dir / name).write_bytes(encode(smooth_rgb(48, 64, seed=i), ".jpg"))
        images.append({"id": i + 1, "file_name": name, "width": 64, "height": 48})
        for k in range(2):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": 1 + (i + k) % 2,
                         "bbox": [2 + 5 * k, 3 + 4 * k, 20 + i, 16 + k], "iscrowd": 0})
    jpg = encode(smooth_rgb(48, 64, seed=9), ".jpg")
    (img_dir / "corrupt.jpg").write_bytes(jpg[: len(jpg) // 2])
    (img_dir / "empty.jpg").write_bytes(b"")
    (img_dir / "notes.png").write_text("these are not pixels\n")
    for j, name in enumerate(BAD):  # listed in the annotations too: the reader, not the lookup, rejects them
        images.append({"id": 100 + j, "file_name": name, "width": 64, "height": 48})
    gt = d / "gt.json"
    gt.write_text(json.dumps({"images": images, "annotations": anns,
                              "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}))
    torch.manual_seed(0)
    m = build_classifier("v3_79", 2, width=0.125, aux_logits=False)
    ckpt = save_checkpoint(d / "clf.pth", m, model_meta(m, "v3_79", ["cat", "dog"]))
    return img_dir, gt, ckpt


def _args(dataset, out, *extra):
    img_dir, gt, ckpt = dataset
    return ["--input", str(img_dir), "--output", str(out), "--detector", f"gt:{gt}", "--classifier-weights",
            str(ckpt), "--no-progress", "--vis-limit", "0", "--batch-size", "2", *extra]


def test_batch_run_processes_every_good_image_and_names_the_bad(dataset, tmp_path, capsys):
    out = tmp_path / "out"
    rc = _infer().main(_args(dataset, out))
    err = capsys.readouterr().err
    assert rc == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == len(GOOD) and summary["boxes"] == 2 * len(GOOD)
    bad = {Path(b["path"]).name: b["reason"] for b in summary["bad_inputs"]}
    assert set(bad) == set(BAD)
    for name, word in BAD.items():
        assert word in bad[name].lower(), (name, bad[name])
        assert name in err and bad[name] in err  # also on stderr
    preds = json.loads((out / "predictions.json").read_text())
    assert {Path(p["file_name"]).name for p in preds} == set(GOOD) and len(preds) == 2 * len(GOOD)
    # atomic writes leave no temporary files behind
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]


def test_detections_file_with_bad_entries_fails_the_run_but_uses_the_rest(dataset, tmp_path, capsys):
    img_dir, gt, ckpt = dataset
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([
        {"image_id": 1, "category_id": 1, "bbox": [2, 3, 20, 16], "score": 0.9},
        {"image_id": 1, "category_id": 7, "bbox": [2, 3, 20, 16], "score": 0.9},
        {"image_id": 2, "category_id": 2, "bbox": [1, 1, 10, 10], "score": 0.8},
    ]))
    out = tmp_path / "out"
    rc = _infer().main(["--input", *(str(img_dir / g) for g in GOOD), "--output", str(out), "--detector",
                        f"detections:{dets}", "--categories", str(gt), "--classifier-weights", str(ckpt),
                        "--no-progress", "--vis-limit", "0"])
    err = capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert rc == 1 and summary["images"] == len(GOOD) and summary["boxes"] == 2
    (entry,) = summary["bad_entries"]
    assert "entry 1" in entry and "category_id 7" in entry and str(dets) in entry and "entry 1" in err


def test_stopped_run_resumes_without_redoing_or_duplicating(dataset, tmp_path, monkeypatch, capsys):
    from crop_classifier.inference import runner

    infer = _infer()
    ref = tmp_path / "ref"
    assert infer.main(_args(dataset, ref)) == 1

    seen = []
    real = runner.process_batch

    def counting(run_, records, *a, **k):
        seen.extend(Path(r.file_name).name for r in records)
        if stop_after is not None and len(seen) > stop_after:
            raise KeyboardInterrupt  # the run is stopped in its third batch
        return real(run_, records, *a, **k)

    monkeypatch.setattr(runner, "process_batch", counting)
    out = tmp_path / "out"
    stop_after = 4
    capsys.readouterr()
    # Ctrl-C: exit 130, no traceback, what is saved and the command that continues
    assert infer.main(_args(dataset, out)) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and "interrupted: 4 image(s) saved" in err
    assert err.strip().endswith("--resume") and f"--output {out}" in err
    assert not (out / "predictions.json").exists()
    finished = sorted(p for p in (out / "parts").glob("*.json") if p.name != "options.json")
    assert len(finished) == 4
    stamps = {p: p.stat().st_mtime_ns for p in finished}

    seen.clear()
    stop_after = None
    assert infer.main(_args(dataset, out, "--resume")) == 1
    assert seen == [GOOD[4]]  # only the unfinished image was processed
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished parts untouched
    got = json.loads((out / "predictions.json").read_text())
    assert got == json.loads((ref / "predictions.json").read_text())  # no duplicates, same as uninterrupted
    s_ref, s = (json.loads((d / "summary.json").read_text()) for d in (ref, out))
    assert (s["images"], s["boxes"], s["bad_inputs"]) == (s_ref["images"], s_ref["boxes"], s_ref["bad_inputs"])
    # the images taken from the earlier parts are reported apart from those processed (and timed) now
    assert (s["images_resumed"], s["images_processed"]) == (4, 1) and s_ref["images_resumed"] == 0
    assert "resumed: 4 image(s)" in capsys.readouterr().out

    # resuming a finished run redoes nothing; other options are refused; without --resume it starts afresh
    seen.clear()
    assert infer.main(_args(dataset, out, "--resume")) == 1 and seen == []
    assert json.loads((out / "predictions.json").read_text()) == got
    assert infer.main(_args(dataset, out, "--resume", "--fusion", "rescore")) == 2
    seen.clear()
    assert infer.main(_args(dataset, out)) == 1 and sorted(seen) == GOOD


# ------------------------------------------------------------------------------------- nested folders, vis names
@pytest.fixture(scope="module")
def nested(tmp_path_factory, dataset):
    """A folder with a sub-folder, a GIF and a text file; ground truth for every image (keyed by base name)."""
    from PIL import Image

    from robustness_helpers import pil_bytes

    _, _, ckpt = dataset
    d = tmp_path_factory.mktemp("nested")
    files = {"in/a/x.jpg": encode(smooth_rgb(48, 64, seed=1), ".jpg"),
             "in/a/x.png": encode(smooth_rgb(48, 64, seed=2), ".png"),
             "in/b/deep/y.jpg": encode(smooth_rgb(48, 64, seed=3), ".jpg"),
             "in/anim.gif": pil_bytes(Image.fromarray(smooth_rgb(48, 64, seed=4)).convert("P"), "GIF"),
             "in/b/notes.txt": b"not pixels\n"}
    for name, data in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    names = ["x.jpg", "x.png", "y.jpg", "anim.gif"]
    gt = d / "gt.json"
    gt.write_text(json.dumps({
        "images": [{"id": i + 1, "file_name": n, "width": 64, "height": 48} for i, n in enumerate(names)],
        "annotations": [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [2, 3, 20, 16], "iscrowd": 0}
                        for i in range(len(names))],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]}))
    return d / "in", gt, ckpt


def test_nested_folder_gif_and_text_file_are_all_accounted_for(nested, tmp_path, capsys):
    """Before: the sub-folders and the GIF were skipped and the text file dropped without a word."""
    folder, gt, ckpt = nested
    out = tmp_path / "out"
    rc = _infer().main(["--input", str(folder), "--output", str(out), "--detector", f"gt:{gt}",
                        "--classifier-weights", str(ckpt), "--no-progress", "--vis-limit", "0"])
    err = capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    preds = json.loads((out / "predictions.json").read_text())
    assert {str(Path(p["file_name"]).relative_to(folder)) for p in preds} == {
        "a/x.jpg", "a/x.png", "b/deep/y.jpg", "anim.gif"}
    assert summary["images"] == 4
    assert [Path(b["path"]).name for b in summary["bad_inputs"]] == ["notes.txt"]
    assert rc == 1 and "notes.txt" in err and "not an image or video" in err


def test_every_input_leaves_its_own_picture(nested, tmp_path):
    folder, gt, ckpt = nested
    out = tmp_path / "out"
    _infer().main(["--input", str(folder), "--output", str(out), "--detector", f"gt:{gt}",
                   "--classifier-weights", str(ckpt), "--no-progress", "--vis-limit", "10"])
    assert sorted(p.name for p in (out / "vis").iterdir()) == ["a_x.jpg", "a_x.png.jpg", "anim.gif.jpg",
                                                               "b_deep_y.jpg"]
