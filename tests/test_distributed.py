"""DDP on CPU (gloo, 2 processes on 127.0.0.1) against single-process training with the same global batch.

The comparison is made exact by construction, not loosened to fit:
* data order: the distributed sampler gives rank r the r-th half of each global batch, so the ranks'
  batches together are the single-process batch (tests/test_distributed_sampler.py);
* BatchNorm: without SyncBatchNorm (GPU-only in PyTorch) each DDP process normalises with its own half
  batch's statistics, which is a different computation. Here BatchNorm is frozen (running statistics, as
  when fine-tuning with frozen BN), so each sample's forward pass does not depend on how the batch is split;
* dropout (random per process) is off, crop jitter and augmentation too.
What remains is float32 summation order (two half-batch gradients averaged by the all-reduce vs one
full-batch gradient; oneDNN kernels picked per batch size), and how the second step carries it: that step's
forward pass runs on weights that differ by ~1e-7, which flips the odd ReLU or max-pool tie whose input is
that close to its kink. Under RMSProp the flip is amplified (a BN bias with a tiny gradient still gets a
normalised, full-size step): with RMSProp (eps 1e-3) the difference was 1e-7 on some scenes and 1e-4 on
others, a coin flip on the data. So this test trains with SGD with momentum (lr 0.125), which passes the
flip on at its true size: measured max |diff| 2e-7 to 8e-7 over several scenes on AVX2 (one intra-op thread
on both sides; the thread count changes the reduction order) after 2 steps that moved the weights by up to
8e-3, and 2e-5 on one BN bias on a CPU with AVX-512/AMX kernels, which round and block their reductions
differently. A flipped unit is one of the batch x height x width terms its gradient sums (at least
2 x 8 x 8 = 128 on the last grid), so what it carries over is under 1 % of the step each tensor took. The
bound is therefore per tensor and relative to how far training moved that tensor: MOVE_FRACTION (5 %: a few
flips) of its largest movement, plus float32 rounding of its values (FLOOR_ULPS ulps of its scale) for
tensors training hardly moved. A DDP that did not average the gradients would be off by the size of the
step itself. The optimiser itself is the
same code for every choice (tests/test_engine_training.py covers RMSProp's resume bit for bit).
"""
import json
import os
import socket
import types

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from crop_classifier.config import load_config
from crop_classifier.engine import Trainer
from crop_classifier.engine.trainer import seed_everything
from crop_classifier.engine.metrics import read_metrics
from crop_classifier.models import build_classifier, load_checkpoint

MOVE_FRACTION = 0.05
FLOOR_ULPS = 64


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_cfg(scenes, out, *opts):
    return load_config(None, [
        "MODEL.ARCH", "'v3_79'", "MODEL.WIDTH", "0.125", "DATASETS.TRAIN", f"['{scenes}']", "DATASETS.TEST", "[]",
        "SOLVER.IMS_PER_BATCH", "4", "SOLVER.OPTIMIZER", "sgd", "SOLVER.BASE_LR", "1.0", "SOLVER.LR_DECAY_EPOCHS", "1.0",
        "SOLVER.LOG_PERIOD", "1", "SOLVER.CHECKPOINTS_TO_KEEP", "0", "DATALOADER.NUM_WORKERS", "0",
        "INPUT.AUGMENT", "False", "INPUT.JITTER_IOU", "0.0", "OUTPUT_DIR", str(out), *opts])


def make_split_invariant(model: nn.Module) -> None:
    """Frozen BatchNorm (always eval, running statistics) and no dropout; see the module docstring."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train = types.MethodType(lambda self, mode=True: nn.Module.train(self, False), m)
            m.eval()
        elif isinstance(m, nn.Dropout):
            m.p = 0.0


def _ddp_train_worker(rank, world, port, scenes, out_dir, max_epochs, result_dir, opts=()):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    import torch.distributed as dist

    try:
        trainer = Trainer(tiny_cfg(scenes, out_dir, "SOLVER.MAX_EPOCHS", str(max_epochs), *opts), progress=False)
        assert dist.is_initialized() and dist.get_backend() == "gloo" and trainer.world_size == world
        make_split_invariant(trainer.module)
        trainer.train()
        trainer.train_loader.batch_sampler.set_epoch(0)
        torch.save({"state": trainer.module.state_dict(), "per_rank_batch": trainer.per_rank_batch,
                    "iters": trainer.iters_per_epoch, "batches": [list(b) for b in trainer.train_loader.batch_sampler]},
                   os.path.join(result_dir, f"rank{rank}.pt"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn_ddp_training(scenes, out_dir, max_epochs, result_dir, world=2, opts=()):
    mp.spawn(_ddp_train_worker, args=(world, free_port(), scenes, str(out_dir), max_epochs, str(result_dir), tuple(opts)),
             nprocs=world, join=True)
    return [torch.load(result_dir / f"rank{r}.pt", weights_only=True) for r in range(world)]


def single_process(scenes, out, max_epochs, resume=False, opts=()):
    # One intra-op thread, as in the DDP workers: the thread count changes oneDNN's reduction order, and
    # that float noise is what a second step can carry across a ReLU kink (module docstring).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t = Trainer(tiny_cfg(scenes, out, "SOLVER.MAX_EPOCHS", str(max_epochs), *opts), resume=resume, progress=False)
        assert t.world_size == 1
        make_split_invariant(t.module)
        t.train()
    finally:
        torch.set_num_threads(threads)
    return t


def initial_state(scenes, class_names, opts=()):
    """The weights every run starts from (the trainer seeds before it builds the model)."""
    cfg = tiny_cfg(scenes, "unused", *opts)
    seed_everything(cfg.SEED)
    routes = cfg.MODEL.ROUTES.ARCHS if cfg.MODEL.ARCH == "auto" else None
    return build_classifier(cfg.MODEL.ARCH, len(class_names), width=0.125, routes=routes).state_dict()


def assert_close_state(a, b, init, what):
    """Each tensor of ``b`` within the module doc's bound of ``a``: MOVE_FRACTION of how far training moved it
    from ``init`` plus float32 rounding of its scale. Returns the largest |diff|."""
    assert a.keys() == b.keys() == init.keys()
    worst = 0.0
    for k in a:
        x, y, x0 = a[k].double(), b[k].double(), init[k].double()
        diff, moved = float((x - y).abs().max()), float((x - x0).abs().max())
        tol = MOVE_FRACTION * moved + FLOOR_ULPS * torch.finfo(torch.float32).eps * float(x.abs().max())
        assert diff <= tol, f"{what}: {k}: max |diff| {diff:.3g} > {tol:.3g} (it moved {moved:.3g} in training)"
        worst = max(worst, diff)
    return worst


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    # One synthetic scene of 8-11 crops: 2 global batches of 4 per epoch. Generated here, before any spawn.
    from crop_classifier.engine.data import load_dataset

    name = f"synthetic:{tmp_path_factory.mktemp('scenes')}/train:1:1"
    assert len(load_dataset(name).samples) // 4 == 2
    return name


def test_ddp_gloo_two_processes_match_single_process_and_resume_on_one(scenes, tmp_path):
    ddp_dir, ref_dir = tmp_path / "ddp", tmp_path / "single"
    results = tmp_path / "results"
    results.mkdir()
    ranks = spawn_ddp_training(scenes, ddp_dir, 1, results)
    assert [r["per_rank_batch"] for r in ranks] == [2, 2] and [r["iters"] for r in ranks] == [2, 2]
    # DDP keeps the replicas identical.
    for k, v in ranks[0]["state"].items():
        assert torch.equal(v, ranks[1]["state"][k]), k

    ref = single_process(scenes, ref_dir, 1)
    ref_state = ref.module.state_dict()
    init = initial_state(scenes, ref.class_names)
    worst = assert_close_state(ref_state, ranks[0]["state"], init, "DDP vs single process after 1 epoch")
    # Not vacuous: training moved the weights, and DDP followed it far closer than that (measured 1e-4 of it).
    moved = max(float((init[k].float() - ref_state[k].float()).abs().max()) for k in init if k.endswith("weight"))
    assert moved > 1e-3 and worst < MOVE_FRACTION * moved, (moved, worst)

    # Rank 0 alone logged and checkpointed: one train record per step, a checkpoint holding both ranks'
    # random states, the world size it was written with, and the global-batch-scaled learning rate.
    assert len(read_metrics(ddp_dir / "metrics.jsonl", "train")) == 2
    ckpt = load_checkpoint(ddp_dir / "model_epoch_0001.pth")
    assert ckpt["world_size"] == 2 and len(ckpt["rng"]) == 2 and ckpt["iters_per_epoch"] == 2
    assert ckpt["optimizer"]["param_groups"][0]["initial_lr"] == pytest.approx(1.0 * 4 / 32)
    assert (ddp_dir / "model_final.pth").is_file()

    # --resume under another world size: the 2-process checkpoint continues on 1 process and ends where
    # 2 epochs of single-process training end.
    resumed = single_process(scenes, ddp_dir, 2, resume=True)
    assert resumed.start_epoch == 1
    straight = single_process(scenes, tmp_path / "straight", 2)
    assert_close_state(straight.module.state_dict(), resumed.module.state_dict(), init, "DDP(2) -> resume(1)")
    log = [json.loads(line) for line in (ddp_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if r.get("kind") == "epoch"] == [1, 2]


def test_ddp_routed_classifier_matches_single_process(scenes, tmp_path):
    """MODEL.ARCH auto under DDP: every rank takes its part of the same route's global batch (one input size per
    step on every process) and training equals single-process training with that global batch."""
    from crop_classifier.engine.data import load_dataset, sample_native_sides

    threshold = float(np.median(sample_native_sides(load_dataset(scenes).samples, 0.1)))  # both routes get crops
    opts = ("MODEL.ARCH", "'auto'", "MODEL.ROUTES.ARCHS", "['v3_79', 'v3_151']",
            "MODEL.ROUTES.THRESHOLDS", f"[{threshold}]", "SOLVER.IMS_PER_BATCH", "2")
    results = tmp_path / "results"
    results.mkdir()
    ranks = spawn_ddp_training(scenes, tmp_path / "ddp", 1, results, opts=opts)
    assert ranks[0]["iters"] == ranks[1]["iters"] == len(ranks[0]["batches"]) > 1
    for a, b in zip(ranks[0]["batches"], ranks[1]["batches"]):
        assert len(a) == len(b) == 1 and a[0][1] == b[0][1] and a[0][0] != b[0][0]
    assert len({b[0][1] for b in ranks[0]["batches"]}) == 2 and ranks[0]["iters"] >= 3  # both routes trained
    for k, v in ranks[0]["state"].items():
        assert torch.equal(v, ranks[1]["state"][k]), k
    ref = single_process(scenes, tmp_path / "single", 1, opts=opts)
    assert ref.iters_per_epoch == ranks[0]["iters"]
    assert_close_state(ref.module.state_dict(), ranks[0]["state"], initial_state(scenes, ref.class_names, opts),
                       "routed DDP vs single process")
    meta = load_checkpoint(tmp_path / "ddp" / "model_final.pth")["meta"]
    assert meta["arch"] == "auto" and meta["routes"]["thresholds"] == [threshold]
