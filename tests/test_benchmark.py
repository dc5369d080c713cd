"""tools/benchmark.py on tiny settings (structure and consistency of the figures, never their speed), and the
benchmark helpers' logic."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.crops import per_box_loop, random_boxes, random_image
from benchmarks.models import MODEL_NAMES, REFERENCE, build_model, count_gmacs
from benchmarks.targets import evaluate_targets
from benchmarks.timing import PeakRSS, Timing, paired_ratio, percentile, time_interleaved
from tool_loader import load_tool

HAVE_D2 = importlib.util.find_spec("detectron2") is not None


def _tool():
    return load_tool("benchmark")


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    # One thread: tiny ops are dominated by OpenMP hand-offs, which stall badly when other processes share
    # the cores (these settings measure nothing; the test checks structure and consistency).
    rc = _tool().main(["--output", str(out), "--tiny", "--threads", "1", "--only", "models,crops,tradeoff,memory",
                       "--work-dir", str(tmp_path_factory.mktemp("work"))])
    return rc, out, json.loads((out / "benchmark.json").read_text())


def test_tiny_run_writes_every_output(tiny_run):
    rc, out, res = tiny_run
    assert rc == 0
    assert res["complete"] is True and res["preset"] == "tiny"
    assert res["sections"] == ["models", "crops", "tradeoff", "memory"]
    env = res["environment"]
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] or env["packages"]["torch"].startswith(
        torch.__version__.split("+")[0])
    assert env["cpu_count"] >= 1 and env["torch_threads"] == 1
    # Plots of the sections that ran (pipeline did not) are real PNGs, and no temporary file is left behind.
    assert set(res["plots"]) == {"throughput", "crops", "tradeoff", "tradeoff_size"}
    for name in res["plots"].values():
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    md = (out / "benchmark.md").read_text()
    for title in ("## Classifiers", "## Crops", "## Resolution trade-off", "## Memory"):
        assert title in md
    assert "## Pipeline" not in md


def test_tiny_models_section(tiny_run):
    _, _, res = tiny_run
    m = res["models"]
    # torchvision's reference has no width knob, so a width-reduced run covers our variants only.
    assert set(m["info"]) == {"v3_79", "v3_299"}
    assert m["info"]["v3_79"]["params"] == m["info"]["v3_299"]["params"]  # the stems carry no parameters
    assert m["info"]["v3_79"]["params_with_aux"] > m["info"]["v3_79"]["params"]
    got = {(r["model"], r["mode"], r["batch"]) for r in m["rows"]}
    expected = {(n, "optimized", b) for n in ("v3_79", "v3_299") for b in (1, 2)} | {("v3_299", "eager", 2)}
    assert got == expected
    for r in m["rows"]:
        assert r["latency_p95_ms"] >= r["latency_p50_ms"] > 0
        assert r["crops_per_s"] == pytest.approx(r["batch"] / (r["latency_p50_ms"] / 1e3))
        gmacs = m["info"][r["model"]]["gmacs"]
        assert r["gflops"] == pytest.approx(2 * gmacs * r["batch"] * r["crops_per_s"] / r["batch"])
        assert r["efficiency"] == pytest.approx(r["gflops"] / r["matmul_gflops"])


def test_tiny_crops_tradeoff_memory_sections(tiny_run):
    _, _, res = tiny_run
    crops = res["crops"]["rows"]
    assert [r["boxes"] for r in crops] == [1, 10, 100]
    for r in crops:
        assert r["loop_ms"] > 0 and r["ours_ms"] > 0
        assert r["speedup_ours"] > 0 and r["speedup_roi_align"] > 0
    # The crop target is evaluated from the 100-box row.
    crop_t = [t for t in res["targets"] if t["target"].startswith("crops at 100 boxes")]
    assert len(crop_t) == 1 and crop_t[0]["value"] == crops[2]["speedup_ours"]

    t = res["tradeoff"]
    names = [r["name"] for r in t["rows"]]
    assert names == ["v3_79", "v3_151", "v3_299", "v3_299 upsampled", "v3_299 stem @79", "routed (auto)"]
    by = {r["name"]: r for r in t["rows"]}
    for r in t["rows"]:
        assert 0.0 <= r["top1"] <= r["top5"] <= 1.0
        assert r["steps"] >= 1 and r["test_crops"] > 0
    # Cost ordering the comparison rests on: upsampling to 299 costs what v3_299 costs; shrinking is far cheaper.
    assert by["v3_299 upsampled"]["gmacs"] >= by["v3_299"]["gmacs"]
    assert by["v3_299 stem @79"]["gmacs"] < 0.2 * by["v3_79"]["gmacs"]
    assert t["datasets"]["synthetic"]["train_crops"] == by["v3_79"]["train_crops"] <= 8
    assert t["recipe_name"] == "cpu" and "eps 1e-08" in t["recipe"]
    # Every row's top-1 per native size bucket adds up to its overall top-1 over the same crops.
    for r in t["rows"]:
        b = r["buckets"]
        assert sum(b[k]["n"] for k in t["size_buckets"]) == b["all"]["n"] == r["test_crops"]
        assert b["all"]["top1"] == pytest.approx(r["top1"])
        assert sum(b[k]["n"] * (b[k]["top1"] or 0) for k in t["size_buckets"]) == pytest.approx(r["top1"] * r["test_crops"])
    assert t["datasets"]["synthetic"]["test_buckets"] == {k: by["v3_79"]["buckets"][k]["n"] for k in t["size_buckets"]}
    routed = by["routed (auto)"]
    assert routed["arch"] == "auto" and sum(routed["test_route_shares"].values()) == pytest.approx(1.0)
    assert set(t["routing_goal"]["synthetic"]) >= {"buckets", "met", "overall_diff_points"}

    mem = res["memory"]
    assert mem["images"] == 20 and len(mem["samples"]) >= 2
    assert mem["growth_mb"] == pytest.approx(mem["rss_end_mb"] - mem["rss_after_warmup_mb"])


@pytest.mark.detectron2
def test_tiny_pipeline_section(tmp_path):
    rc = _tool().main(["--output", str(tmp_path), "--tiny", "--threads", "1", "--only", "pipeline"])
    assert rc == 0
    p = json.loads((tmp_path / "benchmark.json").read_text())["pipeline"]
    assert p["detector_gflop"] > 0 and p["detections_at_score_0"] >= 3
    assert [(r["boxes"], r["variant"]) for r in p["rows"]] == [(1, "v3_79"), (3, "v3_79")]
    for r in p["rows"]:
        assert 0 < r["second_stage_share"] < 1
        assert r["total_ms"] == pytest.approx(r["detector_ms"] + r["second_stage_ms"])
    assert (tmp_path / "pipeline_share.png").read_bytes()[:8] == PNG_MAGIC


def test_bad_arguments_are_reported(tmp_path, capsys):
    tool = _tool()
    assert tool.main(["--output", str(tmp_path), "--only", "models,speed"]) == 2
    assert "unknown section(s) ['speed']" in capsys.readouterr().err
    assert tool.main(["--output", str(tmp_path), "--only", "tradeoff", "--tradeoff-datasets", "synthetic,imagenet"]) == 2
    assert "unknown dataset(s) ['imagenet']" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert tool.main(["--output", str(tmp_path), "--tiny", "--device", "cuda", "--only", "crops"]) == 2
        assert "torch.cuda.is_available() is False" in capsys.readouterr().err
    assert not (tmp_path / "benchmark.json").exists()


# ------------------------------------------------------------------------------------------------ helpers
def test_per_box_loop_is_the_square_padded_resize():
    img = random_image(200, 120, seed=3)
    bgr = np.ascontiguousarray(img[:, :, ::-1])
    box = np.array([[50, 40, 70, 50]], dtype=np.float32)  # 20x10: square side 20*1.3+30 = 56 around (60, 45)
    out = per_box_loop(bgr, box, 16)
    assert out.shape == (1, 3, 16, 16) and out.dtype == torch.float32
    import cv2

    expected = cv2.resize(img[17:73, 32:88], (16, 16)).transpose(2, 0, 1).astype(np.float32) / 255
    np.testing.assert_allclose(out[0].numpy(), expected, atol=1e-6)
    assert per_box_loop(bgr, np.zeros((0, 4), np.float32), 16).shape == (0, 3, 16, 16)


def test_random_boxes_lie_in_the_image():
    b = random_boxes(500, 1280, 720, seed=1)
    assert b.shape == (500, 4)
    assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= 1280).all() and (b[:, 3] <= 720).all()
    assert (b[:, 2] > b[:, 0]).all() and (b[:, 3] > b[:, 1]).all()
    side = np.sqrt((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))
    assert 35 < np.median(side) < 80  # COCO-like: median side near 55 px
    np.testing.assert_array_equal(b, random_boxes(500, 1280, 720, seed=1))


def test_timing_statistics_and_pairing():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([0.0, 10.0], 95) == pytest.approx(9.5)
    t = Timing([0.1, 0.3, 0.2])
    assert t.median == 0.2 and t.best == 0.1 and t.summary()["n"] == 3
    # Per-round ratios: a burst slowing both sides of one round does not move the paired ratio.
    a, b = Timing([2.0, 2.0, 20.0]), Timing([1.0, 1.0, 10.0])
    assert paired_ratio(a, b) == 2.0
    calls = []
    out = time_interleaved({"x": lambda: calls.append("x"), "y": lambda: calls.append("y")}, rounds=2, warmup=1,
                           repeats={"y": 2})
    assert calls == ["x", "y", "x", "y", "y", "x", "y", "y"]
    assert out["x"].n == 2 and out["y"].n == 4


def test_peak_rss_sees_a_large_allocation():
    with PeakRSS() as peak:
        big = torch.ones(64 * 2**20 // 4)  # 64 MB, every page touched
        assert float(big[-1]) == 1.0
    assert peak.delta_mb > 40


def test_reference_model_and_flop_counts():
    assert MODEL_NAMES[-1] == REFERENCE
    with pytest.raises(ValueError, match="width 1.0 only"):
        build_model(REFERENCE, width=0.5)
    # fvcore's multiply-adds of one 3x3 conv, 3 -> 8 channels, on 10x10: 8x8 outputs x 8 channels x 27.
    conv = torch.nn.Conv2d(3, 8, 3, bias=False)
    assert count_gmacs(conv, 10) * 1e9 == pytest.approx(8 * 8 * 8 * 27)


def _models_section(eff, ratio):
    return {"device": "cpu",
            "rows": [{"model": m, "mode": "optimized", "batch": 32, "efficiency": e, "gflops": 100 * e,
                      "matmul_gflops": 100.0} for m, e in zip(("v3_79", "v3_151", "v3_299"), eff)],
            "ratios": [{"model": "v3_299", "mode": "optimized", "vs_mode": "eager", "batch": 8,
                        "throughput_ratio": ratio}]}


def test_targets_are_judged_against_their_thresholds():
    t = evaluate_targets({"models": _models_section((0.7, 0.6, 0.55), 1.3),
                          "memory": {"growth_mb": 60.0, "images": 1000, "slope_mb_per_1000_images": 55.0},
                          "crops": {"device": "cpu", "rows": [{"boxes": 100, "size": 79, "speedup_ours": 0.8,
                                                               "speedup_ours_no_antialias": 1.1}]},
                          "pipeline": {"error": "RuntimeError: no detectron2"}})
    by = {x["target"].split(" ")[0]: x for x in t}
    assert by["v3_299"]["status"] == "met" and by["v3_299"]["value"] == 1.3
    assert by["classifier"]["status"] == "met" and by["classifier"]["value"] == 0.55  # the worst variant
    assert by["crops"]["status"] == "missed"
    assert by["RSS"]["status"] == "missed"
    assert not any(x["target"].startswith("second stage") for x in t)  # a failed section is not judged
    t2 = evaluate_targets({"models": _models_section((0.7, 0.45, 0.6), 0.9)})
    assert [x["status"] for x in t2] == ["missed", "missed"]


def test_tradeoff_recipes():
    from benchmarks.tradeoff import recipe_cfg
    from crop_classifier.config import get_cfg

    paper, cpu = recipe_cfg(32, 3, None, "paper"), recipe_cfg(32, 3, None, "cpu")
    assert paper.SOLVER.RMSPROP_EPS == get_cfg().SOLVER.RMSPROP_EPS == 1.0
    assert cpu.SOLVER.RMSPROP_EPS == 1e-8 and cpu.SOLVER.LR_DECAY_EPOCHS == 0.25 and cpu.SOLVER.MAX_EPOCHS == 3
    # The CPU recipe is the one configs/cpu trains with, not a second opinion.
    from crop_classifier.config import load_config

    yaml = load_config(Path(__file__).resolve().parents[1] / "configs" / "cpu" / "v3_79_w025_synthetic.yaml")
    for key in ("RMSPROP_EPS", "BASE_LR", "LR_DECAY_EPOCHS", "WARMUP_EPOCHS"):
        assert getattr(cpu.SOLVER, key) == getattr(yaml.SOLVER, key), key
    with pytest.raises(ValueError, match="recipe"):
        recipe_cfg(32, 3, None, "fast")


def test_tradeoff_trains_through_the_engine_and_recalibrates_bn(tmp_path):
    from benchmarks.tradeoff import TrainSettings, train_and_evaluate
    from crop_classifier.models import build_classifier, model_meta

    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 35, 35), dtype=torch.uint8, generator=g)
    y = torch.tensor([0, 1, 0, 1, 0, 1])
    net = build_classifier("v3_79", 2, width=0.0625, aux_logits=False)
    meta = model_meta(net, "v3_79", ["a", "b"], context=0.1, mode="square")
    meta["input_size"] = 35
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.jsonl").write_text('{"kind": "stale"}\n')
    r = train_and_evaluate(net, meta, (x, y), (x[:4], y[:4]), TrainSettings(epochs=2, batch_size=32), tmp_path / "run")
    # A batch larger than the training set is clamped to it: one step per epoch, through the engine's Trainer.
    assert r["batch_size"] == 6 and r["steps"] == 2 and 0.0 <= r["top1"] <= r["top5"] == 1.0
    kinds = [json.loads(line)["kind"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "stale" not in kinds and kinds.count("epoch") == 2
    # BN statistics recomputed from scratch over the calibration batches (here the one batch of the training
    # set; training itself tracked two), momentum restored afterwards.
    bn = net.Conv2d_1a_3x3.bn
    assert bn.momentum == 0.1 and int(bn.num_batches_tracked) == 1 and float(bn.running_mean.abs().sum()) > 0


@pytest.mark.detectron2
def test_tiny_video_section(tmp_path):
    """--only video with the demo models on a few synthetic frames: calls, accuracy per variant, report."""
    pytest.importorskip("detectron2")
    pytest.importorskip("norfair")
    rc = _tool().main(["--output", str(tmp_path), "--tiny", "--threads", "1", "--only", "video"])
    res = json.loads((tmp_path / "benchmark.json").read_text())
    assert rc == 0, res.get("video")
    v = res["video"]
    assert v["frames"] == 3 and v["classifier_calls"]["policy"] <= v["classifier_calls"]["every_box"]
    assert set(v["accuracy"]) >= {"per_frame", "track_weighted", "track_last", "track_mean"}
    assert "## Video tracking" in (tmp_path / "benchmark.md").read_text()
    assert any(t["target"].startswith("video: classifier calls") for t in res["targets"])


# ------------------------------------------------------------------------------------------------ data paths
def test_data_paths_are_the_callers_to_give(tmp_path):
    """The sections find their files through arguments only: the library resolves nothing from its own place."""
    from benchmarks.runner import DataPaths, run_benchmark
    from benchmarks.tradeoff import dataset_records

    assert DataPaths(configs=tmp_path).config("d2/x.yaml") == str(tmp_path / "d2" / "x.yaml")
    assert DataPaths().config(str(tmp_path / "abs.yaml")) == str(tmp_path / "abs.yaml")
    with pytest.raises(ValueError, match="configs"):
        DataPaths().config("d2/x.yaml")
    with pytest.raises(ValueError, match="coco128=DIR"):
        dataset_records("coco128", tmp_path, synthetic_train=0, synthetic_test=0, image_size=0,
                        coco_test_fraction=0.25)
    # run_benchmark without paths: a section that needs one fails as a section (named), the run still completes.
    res = run_benchmark(tmp_path / "out", preset="tiny", only=["video"], log=lambda _: None)
    assert "demo models" in res["video"]["error"] and res["complete"]
    assert res["data_paths"] == {"configs": None, "coco128": None, "demo_weights": None}


def test_the_tool_runs_from_the_checkout_without_an_install_of_benchmarks(tmp_path):
    """tools/benchmark.py puts the repository root on sys.path (benchmarks/ is not installed), from any folder."""
    tool = Path(__file__).resolve().parents[1] / "tools" / "benchmark.py"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, str(tool), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "--coco128" in r.stdout and "--only" in r.stdout
