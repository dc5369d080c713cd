"""benchmark.md and the PNG plots from one run's results dict (every file written atomically)."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from crop_classifier.utils.io import atomic_write_bytes, atomic_write_text

from .deploy import deploy_md
from .video import SIZE_BUCKETS, VARIANTS

PLOTS = {
    "throughput": "throughput_vs_batch.png",
    "crops": "crop_speedup_vs_boxes.png",
    "tradeoff": "accuracy_vs_gmacs.png",
    "tradeoff_size": "accuracy_vs_size.png",
    "pipeline": "pipeline_share.png",
}


def _table(headers: Sequence[str], rows: List[Sequence[object]]) -> str:
    def cell(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _ok(section) -> bool:
    return isinstance(section, dict) and "error" not in section


# ------------------------------------------------------------------------------------------------ plots
def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def plot_throughput(models: Dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    series: Dict[str, List] = {}
    for r in models["rows"]:
        series.setdefault(f"{r['model']} ({r['mode']})", []).append((r["batch"], r["crops_per_s"]))
    for label, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                linestyle="--" if "eager" in label else "-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size")
    ax.set_ylabel("crops / s")
    ax.set_title(f"Classifier throughput ({models['device']}, width {models['width']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_crops(crops: Dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    keys = [k[len("speedup_"):] for k in crops["rows"][0] if k.startswith("speedup_")] if crops["rows"] else []
    for size in sorted({r["size"] for r in crops["rows"]}):
        rows = sorted((r for r in crops["rows"] if r["size"] == size), key=lambda r: r["boxes"])
        for k in keys:
            ax.plot([r["boxes"] for r in rows], [r[f"speedup_{k}"] for r in rows], marker="o",
                    label=f"{k} @ {size} px")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"boxes on a {crops['image']} image")
    ax.set_ylabel("speed-up over the per-box loop")
    ax.set_title(f"extract_crops vs per-box cv2 loop ({crops['device']})")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _save(fig, path)


def plot_tradeoff(tradeoff: Dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    datasets = sorted({r["dataset"] for r in tradeoff["rows"]})
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        for r in (r for r in tradeoff["rows"] if r["dataset"] == ds):
            ax.scatter(r["gmacs"], 100 * r["top1"], s=30)
            ax.annotate(r["name"], (r["gmacs"], 100 * r["top1"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
        if tradeoff.get("majority_top1", {}).get(ds) is not None:
            ax.axhline(100 * tradeoff["majority_top1"][ds], color="gray", ls=":", lw=1, label="majority class")
            ax.legend(fontsize=7)
        ax.set_xscale("log")
        ax.set_xlabel("GMACs per crop (fvcore)")
        ax.set_ylabel("top-1 on held-out crops (%)")
        ax.set_title(f"{ds} (width {tradeoff['width']})")
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_tradeoff_size(tradeoff: Dict, path: Path) -> Path:
    """Top-1 per native object size bucket, one line per row (error bars: one standard error), per dataset."""
    import matplotlib.pyplot as plt

    rows = [r for r in tradeoff["rows"] if r.get("buckets")]
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    labels = list(tradeoff.get("size_buckets") or [k for k in rows[0]["buckets"] if k != "all"])
    fig, axes = plt.subplots(1, len(datasets), figsize=(5.5 * len(datasets), 4), squeeze=False)
    for ax, ds in zip(axes[0], datasets):
        ds_rows = [r for r in rows if r["dataset"] == ds]
        for k, r in enumerate(ds_rows):
            pts = [(i + 0.04 * (k - len(ds_rows) / 2), r["buckets"][b]) for i, b in enumerate(labels)
                   if r["buckets"][b]["top1"] is not None]
            routed = r["arch"] == "auto"
            ax.errorbar([x for x, _ in pts], [100 * v["top1"] for _, v in pts], yerr=[100 * v["se"] for _, v in pts],
                        marker="o", ms=4, capsize=2, lw=2.2 if routed else 1.2, ls="-" if routed else "--",
                        label=f"{r['name']} ({100 * r['top1']:.1f} %)")
        counts = ds_rows[0]["buckets"] if ds_rows else {}
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels([f"{b}\n(n={counts[b]['n']})" if b in counts else b for b in labels], fontsize=8)
        if tradeoff.get("majority_top1", {}).get(ds) is not None:
            ax.axhline(100 * tradeoff["majority_top1"][ds], color="gray", ls=":", lw=1)
        ax.set_xlabel("native object size: box's longer side (px)")
        ax.set_ylabel("top-1 on held-out crops (%)")
        ax.set_title(f"{ds} (width {tradeoff['width']}, {tradeoff['epochs']} epochs)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_pipeline(pipeline: Dict, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    series: Dict[str, List] = {}
    for r in pipeline["rows"]:
        series.setdefault(f"{r['variant']} w{r['width']}", []).append((r["boxes"], 100 * r["second_stage_share"]))
    for label, pts in sorted(series.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("boxes per image")
    ax.set_ylabel("second stage share of latency (%)")
    ax.set_title(f"Detector + second stage ({pipeline['device']}, {pipeline['image']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def write_plots(results: Dict, out_dir: Path) -> Dict[str, str]:
    """The plots whose section ran; returns {kind: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    made = {}
    jobs = (("throughput", "models", plot_throughput), ("crops", "crops", plot_crops),
            ("tradeoff", "tradeoff", plot_tradeoff), ("tradeoff_size", "tradeoff", plot_tradeoff_size),
            ("pipeline", "pipeline", plot_pipeline))
    for kind, key, fn in jobs:
        section = results.get(key)
        if kind == "tradeoff_size" and _ok(section) and not any(r.get("buckets") for r in section.get("rows", [])):
            continue
        if _ok(section) and section.get("rows"):
            fn(section, out_dir / PLOTS[kind])
            made[kind] = PLOTS[kind]
    return made


# ------------------------------------------------------------------------------------------------ markdown
def _env_md(env: Dict) -> str:
    pk = env.get("packages", {})
    return (f"{env.get('date_utc')}, commit {env.get('git_commit')}; {env.get('cpu')} ({env.get('cpu_count')} "
            f"cores, {env.get('torch_threads')} torch threads, {env.get('memory_gb')} GB); load average at start "
            f"{', '.join(f'{x:.1f}' for x in env.get('load_average_at_start') or [])}; Python {env.get('python')}, "
            f"torch {pk.get('torch')}, torchvision {pk.get('torchvision')}, Detectron2 {pk.get('sal-detectron2')}, "
            f"OpenCV {pk.get('opencv-python-headless')}" + (f"; GPU {env['gpu']['name']}" if env.get("gpu") else ""))


def _targets_md(targets: List[Dict]) -> str:
    def fmt(t):
        v = t["value"]
        if v is None:
            return "-"
        if t["unit"] == "points":
            return f"{v:+.1f} points"
        return f"{100 * v:.0f} %" if t["unit"] == "fraction" else (f"{v:.1f} MB" if t["unit"] == "MB" else f"x{v:.2f}")

    def thr(t):
        v = t["threshold"]
        s = f"{100 * v:.0f} %" if t["unit"] == "fraction" else (f"{v:.0f} MB" if t["unit"] == "MB" else f"x{v:g}")
        s = f"{v:+g} points" if t["unit"] == "points" else s
        return f"{t['comparison']} {s}"

    return _table(["target", "measured", "required", "status", "detail"],
                  [[t["target"], fmt(t), thr(t), t["status"], t["detail"]] for t in targets])


def _models_md(m: Dict) -> str:
    parts = [f"Device {m['device']}, width {m['width']}, {m['num_classes']} classes. Modes: "
             + "; ".join(f"`{k}` = {v}" for k, v in m["modes"].items()) + "."]
    parts.append(_table(["model", "input", "params", "params with aux", "GMACs"],
                        [[n, i["input_size"], f"{i['params']:,}", f"{i['params_with_aux']:,}" if "params_with_aux" in i
                          else "-", f"{i['gmacs']:.3f}"] for n, i in m["info"].items()]))
    parts.append(_table(
        ["model", "mode", "batch", "crops/s", "p50 ms", "p95 ms", "GFLOP/s", "of matmul", "peak MB", "calls"],
        [[r["model"], r["mode"], r["batch"], r["crops_per_s"], r["latency_p50_ms"], r["latency_p95_ms"],
          r["gflops"], f"{100 * r['efficiency']:.0f} %", r["peak_mem_mb"], r["n_calls"]]
         for r in sorted(m["rows"], key=lambda r: (r["batch"], r["model"], r["mode"]))]))
    parts.append(f"Dense {m['matmul_n']}³ fp32 GEMM timed in the same rounds (GFLOP/s; efficiency = classifier "
                 "GFLOP/s / the faster of the two): " + "; ".join(
                     f"batch {x['batch']}: " + ", ".join(f"{k[:-len('_gflops')]} {v:.0f}" for k, v in x.items()
                                                         if k.endswith("_gflops")) for x in m["matmul"]) + ".")
    for prof in m.get("profiles", []):
        parts.append(f"torch.profiler, {prof['model']} {prof['mode']} batch {prof['batch']} (self CPU time):\n\n"
                     + _table(["op", "calls", "self ms", "share"],
                              [[o["op"], o["calls"], o["self_ms"], f"{100 * o['share']:.1f} %"] for o in prof["ops"]]))
    if m.get("ratios"):
        parts.append("Throughput relative to torchvision's `inception_v3` (per-round paired medians):\n\n" + _table(
            ["model", "mode", "vs torchvision mode", "batch", "ratio"],
            [[r["model"], r["mode"], r["vs_mode"], r["batch"], f"x{r['throughput_ratio']:.2f}"] for r in m["ratios"]]))
    return "\n\n".join(parts)


def _crops_md(c: Dict) -> str:
    keys = [k[len("speedup_"):] for k in c["rows"][0] if k.startswith("speedup_")] if c["rows"] else []
    head = ["size", "boxes", "loop ms"] + [f"{k} ms" for k in keys] + [f"{k} speed-up" for k in keys]
    rows = [[r["size"], r["boxes"], r["loop_ms"]] + [r[f"{k}_ms"] for k in keys]
            + [f"x{r[f'speedup_{k}']:.2f}" for k in keys] for r in c["rows"]]
    return (f"{c['image']} uint8 image, {c['device']}, context {c['context']}, mode {c['mode']}. Baseline: "
            f"{c['baseline']}. Medians of interleaved rounds.\n\n" + _table(head, rows))


def _pipeline_md(p: Dict) -> str:
    rows = [[r["boxes"], r["variant"], r["width"], r["detector_ms"], r["second_stage_ms"], r["total_ms"],
             f"{100 * r['second_stage_share']:.1f} %", r["detector_gflops"], r["second_stage_gflops"]]
            for r in p["rows"]]
    return (f"{p['detector']}; {p['image']} image resized to short side {p['min_size_test']} "
            f"({p['detector_gflop']:.0f} GFLOP per image). Second stage: `SecondStage` (crops + classifier in "
            f"inference form + fusion), context {p['context']}.\n\n"
            + _table(["boxes", "variant", "width", "detector ms", "second stage ms", "total ms", "second-stage share",
                      "detector GFLOP/s", "second stage GFLOP/s"], rows))


def tradeoff_md(t: Dict) -> str:
    """The trade-off section of benchmark.md.

    Args:
        t: the ``tradeoff`` section of benchmark.json (``run_tradeoff``'s result).

    Returns:
        Markdown: the recipe, the rows' table, and with a background class its recall table.
    """
    rows = [[r["dataset"], r["name"], r["arch"], r["input"], f"{r['gmacs']:.3f}", f"{100 * r['top1']:.1f}",
             f"{100 * r['top5']:.1f}", r["train_crops"], r["test_crops"], f"{r['train_s']:.0f}"] for r in t["rows"]]
    maj = "; ".join(f"{k}: {100 * v:.1f} %" for k, v in (t.get("majority_top1") or {}).items())
    out = (f"{t['recipe']}\n\nMajority-class top-1 (for scale): {maj}.\n\n"
           + _table(["dataset", "model", "arch", "input", "GMACs", "top-1 %", "top-5 %", "train crops",
                     "test crops", "train s"], rows))
    with_bg = [r for r in t["rows"] if r.get("background")]
    if with_bg:
        out += (f"\n\nWith a background class ({t.get('background')} random background boxes per object in training and "
                "test; top-1 above counts them, the size buckets below do not):\n\n"
                + _table(["dataset", "model", "top-1 objects %", "background crops", "background recall %",
                          "objects called background %"],
                         [[r["dataset"], r["name"], _pct(r["top1_objects"]), r["background"]["crops"],
                           _pct(r["background"]["recall"]), _pct(r["background"]["objects_called_background"])]
                          for r in with_bg]))
    bucketed = [r for r in t["rows"] if r.get("buckets")]
    if bucketed:
        out += "\n\n" + tradeoff_buckets_md(t)
    return out


def _pct(p) -> str:
    return "-" if p is None else f"{100 * p:.1f}"


def _pm(v: Dict) -> str:
    return "-" if v["top1"] is None else f"{100 * v['top1']:.1f} ± {100 * v['se']:.1f}"


def tradeoff_buckets_md(t: Dict) -> str:
    """Per dataset: top-1 (%) ± one standard error per native object size bucket, crop counts, and the
    routed row against the best fixed row (the routing goal, ``tradeoff.routing_goal``)."""
    labels = list(t.get("size_buckets") or []) + ["all"]
    parts = ["Top-1 (%) ± one standard error by native object size (the box's longer side, px, without context):"]
    for ds in dict.fromkeys(r["dataset"] for r in t["rows"] if r.get("buckets")):
        rows = [r for r in t["rows"] if r["dataset"] == ds and r.get("buckets")]
        n = rows[0]["buckets"]
        parts.append(f"**{ds}** (test crops per bucket: " + ", ".join(f"{b} {n[b]['n']}" for b in labels) + ")\n\n"
                     + _table(["model", "input", "GMACs"] + labels,
                              [[r["name"], r["input"], f"{r['gmacs']:.3f}"] + [_pm(r["buckets"][b]) for b in labels]
                               for r in rows]))
        goal = (t.get("routing_goal") or {}).get(ds)
        if goal:
            diffs = "; ".join(f"{b}: {v['diff_points']:+.1f} vs {v['best_row']} (± {v['se_points']:.1f})"
                              for b, v in goal["buckets"].items())
            parts.append(f"Routed minus the best fixed row, points (± standard error of the difference): {diffs}. "
                         f"Goal (>= 0 in every bucket, >= +2 overall): **{'met' if goal['met'] else 'missed'}**.")
    return "\n\n".join(parts)


def routing_md(r: Dict) -> str:
    shares = ", ".join(f"{a} {100 * v:.1f} %" for a, v in r["route_shares"].items())
    rows = [[x["width"], x["model"], f"{x['gmacs_per_crop']:.3f}", f"{x['crops_per_s']:.1f}",
             f"{1e3 * x['median_s']:.0f}", f"x{x['ratio_vs_v3_79']:.2f}"] for x in r["rows"]]
    return (f"{r['num_crops']} crops, native sides from {r['sides_source']} (median {r['sides']['median']:.0f} px, "
            f"{100 * r['sides']['under_32']:.0f} % under 32 px, {100 * r['sides']['over_150']:.0f} % over 150 px); "
            f"routes {r['routes']} by side x (1 + 2 x {r['context']}); route shares: {shares}. {r['device']}, "
            f"{r['threads']} threads, batch {r['batch']} (the routed classifier batches per route), "
            f"{r['num_classes']} classes, {r['rounds']} interleaved rounds, medians; ratio = median per-round speed "
            "vs v3_79.\n\n"
            + _table(["width", "model", "GMACs/crop", "crops/s", "ms per pass", "vs v3_79"], rows))


def _memory_md(mem: Dict) -> str:
    return (f"{mem['images']} images ({mem['boxes']} boxes) through `SecondStage` with {mem['classifier']} on "
            f"{mem['device']}, after {mem['warmup_images']} warm-up images: RSS {mem['rss_after_warmup_mb']:.1f} → "
            f"{mem['rss_end_mb']:.1f} MB (growth {mem['growth_mb']:.1f} MB, peak {mem['rss_peak_mb']:.1f} MB, "
            f"slope {mem['slope_mb_per_1000_images']:.1f} MB per 1000 images), {mem['seconds']:.0f} s.")


def _deploy_md(d: Dict) -> str:
    return deploy_md(d)  # the deploy section renders its own table (CPU features, GEMM references)


def render_markdown(results: Dict, plots: Optional[Dict[str, str]] = None) -> str:
    plots = plots or {}
    out = [f"# crop_classifier benchmark ({results.get('preset')})", "",
           f"Command: `{results.get('command')}`", "", _env_md(results.get("environment", {})), ""]
    if results.get("targets"):
        out += ["## Targets", "", _targets_md(results["targets"]), ""]
    sections = (("models", "Classifiers", _models_md, "throughput"), ("crops", "Crops", _crops_md, "crops"),
                ("pipeline", "Pipeline", _pipeline_md, "pipeline"), ("tradeoff", "Resolution trade-off", tradeoff_md,
                                                                     "tradeoff"),
                 ("memory", "Memory", _memory_md, None), ("deploy", "Deploy: runtimes side by side", _deploy_md, None),
                 ("video", "Video tracking", video_md, None),
                ("routing", "Size-adaptive routing: cost", routing_md, None))
    for key, title, fn, plot in sections:
        if key not in results:
            continue
        section = results[key]
        out += [f"## {title}", ""]
        if not _ok(section):
            out += [f"Failed: `{section.get('error')}`", ""]
            continue
        out += [fn(section), ""]
        if plot in plots:
            out += [f"![{title}]({plots[plot]})", ""]
        if key == "tradeoff" and "tradeoff_size" in plots:
            out += [f"![accuracy vs object size]({plots['tradeoff_size']})", ""]
        out += [f"Section time: {section.get('section_seconds', 0):.0f} s.", ""]
    return "\n".join(out)


def write_report(results: Dict, out_dir: Path) -> Dict[str, str]:
    out_dir = Path(out_dir)
    plots = write_plots(results, out_dir)
    atomic_write_text(out_dir / "benchmark.md", render_markdown(results, plots))
    return plots


def video_md(v: Dict[str, object]) -> str:
    def pct(x):
        return "-" if x is None else f"{100 * x:.1f}"

    buckets = [b[2] for b in SIZE_BUCKETS] + ["all"]
    acc = v["accuracy"]
    rows = [[name] + [pct(acc[name][b]) for b in buckets] + [pct((v.get("idf1") or {}).get(name))]
            for name in VARIANTS]
    fps = v["frames_per_s"]
    s = v["scene"]
    return (f"{v['videos']} synthetic moving-scene videos × {s['num_frames']} frames ({s['image_size']} px, "
            f"{s['num_objects']} objects each, seed {s['seed']}); {v['detector']} + {v['classifier']}, replace "
            f"fusion within each box's shape; policy {v['policy']}. Ground truth: objects at least "
            f"{100 * v['min_visible']:.0f} % visible; a shown box matches one at IoU >= 0.5 (recall "
            f"{pct(v['recall'])} %).\n\n"
            f"Classifier calls per frame: track policy {v['classifier_calls_per_frame']['policy']:.2f}, every box "
            f"every frame {v['classifier_calls_per_frame']['every_box']:.2f} (ratio {v['calls_ratio']:.3f}). "
            f"Frames/s: detector alone {fps['detector']:.2f}, track loop (detector included) {fps['track_loop']:.2f}, "
            f"every box every frame {fps['every_box']:.2f}.\n\n"
            "Top-1 (%) of the fine-class label shown on each matched box, by the object's size (px), and class-aware "
            "IDF1 (%, motmetrics; HOTA not computed):\n\n"
            + _table(["label shown"] + buckets + ["IDF1"], rows)
            + f"\n\nMatched boxes per bucket: {v['matched_boxes']}; class-agnostic IDF1 "
              f"{pct((v.get('idf1') or {}).get('class_agnostic'))} %.")
