"""The routing measurements: per-size-bucket top-1, the routed row's evaluation at each crop's route, the goal
verdict, the realistic box-size mix and the cost section (tiny settings: structure, never speed)."""
import json
import math

import numpy as np
import pytest
import torch

from benchmarks.routing import LOGNORMAL_MEDIAN, realistic_sides
from benchmarks.tradeoff import HeldOut, held_out_probs, bucket_top1, routing_goal
from tool_loader import load_tool


def test_bucket_top1_counts_and_standard_errors():
    sides = np.array([10, 31.9, 32, 95, 96, 199, 200, 500])
    correct = np.array([1, 0, 1, 1, 0, 0, 1, 1], bool)
    b = bucket_top1(correct, sides)
    assert [b[k]["n"] for k in ("<32", "32-96", "96-200", ">200", "all")] == [2, 2, 2, 2, 8]
    assert [b[k]["top1"] for k in ("<32", "32-96", "96-200", ">200")] == [0.5, 1.0, 0.0, 1.0]
    assert b["<32"]["se"] == pytest.approx(math.sqrt(0.25 / 2)) and b["all"]["top1"] == 5 / 8
    empty = bucket_top1(correct[:2], sides[:2])
    assert empty[">200"] == {"top1": None, "n": 0, "se": None}


def _row(name, arch, accs, n=100):
    buckets = {k: {"top1": a, "n": n, "se": math.sqrt(a * (1 - a) / n)} for k, a in zip(
        ("<32", "32-96", "96-200", ">200", "all"), accs)}
    return {"name": name, "arch": arch, "buckets": buckets}


def test_routing_goal_compares_with_each_buckets_best_fixed_row():
    rows = [_row("v3_79", "v3_79", (0.3, 0.6, 0.5, 0.4, 0.45)),
            _row("v3_299", "v3_299", (0.1, 0.5, 0.7, 0.8, 0.52)),
            _row("routed (auto)", "auto", (0.3, 0.62, 0.69, 0.85, 0.6))]
    g = routing_goal(rows)
    assert g["buckets"]["96-200"]["best_row"] == "v3_299" and g["buckets"]["<32"]["best_row"] == "v3_79"
    assert g["worst_bucket_diff_points"] == pytest.approx(-1.0) and g["overall_diff_points"] == pytest.approx(8.0)
    assert g["met"] is False  # one point short in 96-200
    rows[2]["buckets"]["96-200"]["top1"] = 0.7
    assert routing_goal(rows)["met"] is True
    assert routing_goal(rows[:2]) == {}  # no routed row: nothing to judge


class _BySize(torch.nn.Module):
    """A fake classifier: class = 0 for 79 px inputs, 1 for 151, 2 for 299 (so routing errors show)."""
    class_names = ["a", "b", "c"]

    def forward(self, x):
        k = {79: 0, 151: 1, 299: 2}[x.shape[-1]]
        return torch.nn.functional.one_hot(torch.full((len(x),), k), 3).float()


def test_routed_evaluation_feeds_each_crop_at_its_route():
    sizes = np.array([79, 299, 151, 79, 299])
    x = {s: torch.zeros(5, 3, s, s, dtype=torch.uint8) for s in (79, 151, 299)}
    probs = held_out_probs(_BySize(), HeldOut(x, torch.zeros(5, dtype=torch.long), None, sizes), batch=2)
    assert probs.argmax(1).tolist() == [0, 2, 1, 0, 2]


def test_realistic_mix_falls_back_to_cocos_log_normal(tmp_path):
    sides, source = realistic_sides(20000, np.random.default_rng(0), tmp_path / "absent.json")
    assert "log-normal" in source
    assert np.median(sides) == pytest.approx(LOGNORMAL_MEDIAN, rel=0.05)
    assert np.mean(sides > 150) == pytest.approx(1 / 6, abs=0.015)


def test_tiny_routing_section(tmp_path):
    rc = load_tool("benchmark").main(["--output", str(tmp_path), "--tiny", "--threads", "1", "--only", "routing"])
    assert rc == 0
    res = json.loads((tmp_path / "benchmark.json").read_text())
    r = res["routing"]
    assert sum(r["route_shares"].values()) == pytest.approx(1.0) and set(r["route_shares"]) == {"v3_79", "v3_151",
                                                                                                 "v3_299"}
    by = {x["model"]: x for x in r["rows"]}
    assert set(by) == {"v3_79", "v3_151", "v3_299", "routed (auto)"}
    assert by["v3_79"]["ratio_vs_v3_79"] == 1.0
    for x in r["rows"]:
        assert x["crops_per_s"] == pytest.approx(r["num_crops"] / x["median_s"])
    # The routed cost per crop is the mix of its routes' (between the cheapest and dearest stem).
    g = [by[a]["gmacs_per_crop"] for a in ("v3_79", "v3_151", "v3_299")]
    assert min(g) <= by["routed (auto)"]["gmacs_per_crop"] <= max(g)
    t = [x for x in res["targets"] if x["target"].startswith("routed crops/s")]
    assert len(t) == 1 and t[0]["value"] == by["routed (auto)"]["ratio_vs_v3_79"]
    assert "## Size-adaptive routing: cost" in (tmp_path / "benchmark.md").read_text()


def test_routing_section_takes_its_box_sides_from_the_coco128_folder_given(tmp_path):
    ann = tmp_path / "coco" / "annotations" / "instances_train2017.json"
    ann.parent.mkdir(parents=True)
    ann.write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg", "width": 640, "height": 480}],
        "annotations": [{"id": i, "image_id": 1, "category_id": 1, "bbox": [0, 0, side, side / 2], "iscrowd": 0,
                         "area": side * side / 2} for i, side in enumerate((20.0, 40.0, 300.0), 1)],
        "categories": [{"id": 1, "name": "thing"}]}))
    rc = load_tool("benchmark").main(["--output", str(tmp_path / "out"), "--tiny", "--threads", "1", "--only", "routing",
                                      "--coco128", str(tmp_path / "coco")])
    assert rc == 0
    res = json.loads((tmp_path / "out" / "benchmark.json").read_text())
    assert res["data_paths"]["coco128"] == str(tmp_path / "coco")
    r = res["routing"]
    assert r["sides_source"].startswith("COCO128 box sides (3 boxes") and str(ann) in r["sides_source"]


@pytest.mark.parametrize("classes", [3, 5])
def test_every_tradeoff_row_starts_from_the_shared_checkpoint(tmp_path, classes):
    from benchmarks.tradeoff import MODELS, row_model
    from crop_classifier.models import build_classifier, model_meta, save_checkpoint

    torch.manual_seed(1)
    src = build_classifier("v3_79", 3, width=0.0625, aux_logits=False)
    ckpt = save_checkpoint(tmp_path / "init.pth", src, model_meta(src, "v3_79", ["a", "b", "c"]))
    names = [str(i) for i in range(classes)]
    want = src.state_dict()
    for _, arch, crop, up in MODELS:
        _, net, _ = row_model(arch, crop, up, classes, 0.0625, names, init=str(ckpt))
        got = net.state_dict()
        assert set(got) == set(want), arch
        for k, v in got.items():
            if k.startswith("fc.") and classes != 3:  # another class count: the head is the row's own
                assert v.shape[0] == classes
            else:
                assert torch.equal(v, want[k]), (arch, k)
        # Without init a row starts from its own random weights.
        _, fresh, _ = row_model(arch, crop, up, classes, 0.0625, names)
        assert not torch.equal(fresh.state_dict()["Conv2d_1a_3x3.conv.weight"], want["Conv2d_1a_3x3.conv.weight"])


def test_tradeoff_init_must_fit_the_width_and_exist(tmp_path, capsys):
    from benchmarks.tradeoff import row_model
    from crop_classifier.errors import CheckpointError
    from crop_classifier.models import build_classifier, model_meta, save_checkpoint

    src = build_classifier("v3_79", 2, width=0.125, aux_logits=False)
    ckpt = save_checkpoint(tmp_path / "w0125.pth", src, model_meta(src, "v3_79", ["a", "b"]))
    with pytest.raises(CheckpointError, match="width"):
        row_model("v3_151", 151, None, 2, 0.0625, ["a", "b"], init=str(ckpt))
    rc = load_tool("benchmark").main(["--output", str(tmp_path / "out"), "--tiny", "--only", "tradeoff",
                                      "--tradeoff-init", str(tmp_path / "absent.pth")])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--tradeoff-init" in err[0] and "absent.pth" in err[0]


def test_tradeoff_with_a_background_class(tmp_path):
    """The trade-off keeps working with a background class: negatives in training and test, object-only buckets."""
    from benchmarks.tradeoff import NEGATIVE_MAX_IOU, dataset_records, extract_all, run_tradeoff
    from torchvision.ops import box_iou

    train, _, cats = dataset_records("synthetic", tmp_path / "d", synthetic_train=2, synthetic_test=1, image_size=256,
                              coco_test_fraction=0.25, seed=0)
    label_of = {c: i for i, c in enumerate(sorted(cats))}
    crops, y, boxes = extract_all(train, [35], label_of, context=0.1, negatives=0.5, negative_label=99, seed=3)
    n_obj = sum(len(b) for _, b, _ in train)
    assert len(y) == len(boxes) == len(crops[35]) and int((y == 99).sum()) == int(0.5 * n_obj)
    for rec in train:  # one image at a time: its negatives overlap none of its objects
        _, yy, bb = extract_all([rec], [35], label_of, context=0.1, negatives=1.0, negative_label=99, seed=3)
        neg = torch.from_numpy(bb[(yy == 99).numpy()]).double()
        assert len(neg) == len(rec[1])
        assert box_iou(neg, torch.from_numpy(rec[1]).double()).max() < NEGATIVE_MAX_IOU
    again = extract_all(train, [35], label_of, context=0.1, negatives=0.5, negative_label=99, seed=3)
    assert np.array_equal(again[2], boxes)  # seeded

    res = run_tradeoff(work_dir=tmp_path / "w", datasets=("synthetic",), width=0.0625, epochs=1, batch_size=8,
                       synthetic_train=2, synthetic_test=1, image_size=256, models=("v3_79", "routed (auto)"),
                       background=0.5, log=lambda _: None)
    info = res["datasets"]["synthetic"]
    assert res["background"] == 0.5 and info["background_crops"]["test"] > 0
    for r in res["rows"]:
        assert r["background"]["crops"] == info["background_crops"]["test"]
        assert r["test_crops"] == sum(info["test_buckets"].values()) + r["background"]["crops"]
        assert r["buckets"]["all"]["n"] == sum(info["test_buckets"].values())  # buckets: objects only
        for key in ("recall", "objects_called_background"):
            assert 0.0 <= r["background"][key] <= 1.0
    assert info["classes"] == len({int(c) for _, _, cs in train for c in cs}) + 1  # the objects' + background
    from benchmarks.report import tradeoff_md

    assert "background recall %" in tradeoff_md(res)
