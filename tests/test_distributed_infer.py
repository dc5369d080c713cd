"""Sharded inference: scheduler shards (--num-shards/--shard-id) and torchrun ranks (gloo, 2 spawned processes
on 127.0.0.1) write parts that merge into exactly the single-process outputs."""
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from crop_classifier.data import SYNTHETIC_CLASSES, generate_scenes
from crop_classifier.inference.sharding import Shard, merge_parts
from crop_classifier.models import build_classifier, model_meta, save_checkpoint
from tool_loader import load_tool

SAME_FILES = ("predictions.json", "detector_predictions.json", "eval.json")


def _load_infer():
    return load_tool("infer")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist_infer")
    ann = generate_scenes(root / "scenes", 5, seed=3, image_size=192, split_name="val")
    torch.manual_seed(0)
    m = build_classifier("v3_79", len(SYNTHETIC_CLASSES), width=0.0625, aux_logits=False)
    clf = save_checkpoint(root / "clf.pth", m, model_meta(m, "v3_79", list(SYNTHETIC_CLASSES), context=0.1,
                                                          mode="square"))
    return {"ann": str(ann), "images": str(ann.parent / "images"), "clf": str(clf)}


def _argv(s, out, *extra):
    # A missing input too: reported once in the merged summary, not once per shard.
    return ["--detector", f"gt:{s['ann']}", "--classifier-weights", s["clf"], "--input", s["images"],
            str(Path(s["images"]) / "missing.jpg"), "--output", str(out), "--eval", s["ann"], "--no-progress",
            "--device", "cpu", "--vis-limit", "0", "--batch-size", "2", *extra]


def _outputs(out):
    return {name: json.loads((Path(out) / name).read_text()) for name in SAME_FILES + ("summary.json",)}


def _assert_same_as_single(single, sharded):
    for name in SAME_FILES:
        assert sharded[name] == single[name], name
    a, b = single["summary.json"], sharded["summary.json"]
    for key in ("images", "boxes", "crops", "boxes_changed", "boxes_dropped", "bad_inputs", "categories"):
        assert a[key] == b[key], key


@pytest.fixture(scope="module")
def single(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert _load_infer().main(_argv(setup, out)) == 1  # the missing input
    res = _outputs(out)
    assert res["summary.json"]["images"] == 5 and len(res["predictions.json"]) > 5
    return res


def test_scheduler_shards_merge_into_the_single_process_output(setup, single, tmp_path):
    infer, k = _load_infer(), 3  # 5 images: parts of 1, 2 and 2
    for i in range(k):
        assert not (tmp_path / "predictions.json").exists()  # merged only when every part is written
        rc = infer.main(_argv(setup, tmp_path, "--num-shards", str(k), "--shard-id", str(i)))
        assert rc == (1 if i == k - 1 else 0)
    parts = sorted(p.name for p in (tmp_path / "shards").iterdir())
    assert parts == [f"part-{i:05d}-of-{k:05d}.json" for i in range(k)]
    assert [json.loads((tmp_path / "shards" / p).read_text())["images"] for p in parts] == \
        [len(Shard(k, i).take(range(5))) for i in range(k)]
    _assert_same_as_single(single, _outputs(tmp_path))


def test_bad_shard_arguments_are_usage_errors(setup, tmp_path, capsys):
    infer = _load_infer()
    assert infer.main(_argv(setup, tmp_path, "--num-shards", "2", "--shard-id", "2")) == 2
    assert "--shard-id" in capsys.readouterr().err


def test_merge_numbers_new_images_in_input_order_like_one_process():
    # Images no annotation file knows get ids from first_new_id on; every shard starts its own count there.
    part = lambda i, recs, res: {"shard": i, "num_shards": 2, "wall": 1.0 + i, "bad": [], "records": recs,
                                 "results": res, "det_results": res, "eval_img_ids": [],
                                 **{k: 1 for k in ("images", "boxes", "crops", "changed", "dropped", "t_detect",
                                                   "t_second", "top1_hits", "top1_total")}}
    p0 = part(0, [[7, True], [10, False]], [{"image_id": 7}, {"image_id": 10}])
    p1 = part(1, [[10, False], [11, False], [3, True]], [{"image_id": 11}, {"image_id": 10}, {"image_id": 3}])
    merged, bad, wall = merge_parts([p0, p1], first_new_id=10)
    assert [r["image_id"] for r in merged["results"]] == [7, 10, 12, 11, 3]
    assert merged["images"] == 2 and wall == 2.0 and bad == []


def _torchrun_worker(rank, world, port, argv, rc_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        rc = _load_infer().main(argv)
        Path(rc_dir, f"rc{rank}").write_text(str(rc))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_torchrun_ranks_merge_into_the_single_process_output(setup, single, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "out"
    mp.spawn(_torchrun_worker, args=(2, port, _argv(setup, out), str(tmp_path)), nprocs=2, join=True)
    # Rank 0 merged (and reports the missing input); rank 1 only wrote its part.
    assert [(tmp_path / f"rc{r}").read_text() for r in range(2)] == ["1", "0"]
    assert sorted(p.name for p in (out / "shards").iterdir()) == [f"part-{i:05d}-of-00002.json" for i in range(2)]
    merged = _outputs(out)
    assert merged["summary.json"]["num_shards"] == 2
    _assert_same_as_single(single, merged)
