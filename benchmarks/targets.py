"""The targets the project set itself, checked against one run's figures (ratios from the same run and machine)."""
from __future__ import annotations

from typing import Dict, List, Optional

from .models import REFERENCE

VARIANTS = ("v3_79", "v3_151", "v3_299")


def _target(name: str, value: Optional[float], threshold: float, *, higher_is_better: bool = True,
            detail: str = "", unit: str = "x") -> Dict[str, object]:
    if value is None:
        status = "not measured"
    else:
        status = "met" if (value >= threshold if higher_is_better else value <= threshold) else "missed"
    return {"target": name, "value": value, "threshold": threshold, "unit": unit,
            "comparison": ">=" if higher_is_better else "<=", "status": status, "detail": detail}


def _models_targets(m: Dict[str, object]) -> List[Dict[str, object]]:
    out = []
    if m.get("device") != "cpu":
        return out
    ratios = m.get("ratios", [])
    opt_vs_eager = {r["batch"]: r["throughput_ratio"] for r in ratios
                    if r["model"] == "v3_299" and r["mode"] == "optimized" and r["vs_mode"] == "eager"}
    same = {(r["mode"], r["batch"]): r["throughput_ratio"] for r in ratios
            if r["model"] == "v3_299" and r["mode"] == r["vs_mode"]}
    if opt_vs_eager:
        worst_b = min(opt_vs_eager, key=opt_vs_eager.get)
        detail = "; ".join(
            [f"batch {b}: x{v:.2f} (ours optimized vs torchvision eager)" for b, v in sorted(opt_vs_eager.items())]
            + [f"batch {b} {mode} vs {mode}: x{v:.2f}" for (mode, b), v in sorted(same.items(), key=lambda kv: kv[0][1])])
        out.append(_target("v3_299 throughput vs torchvision inception_v3, same batch, CPU (worst batch)",
                           opt_vs_eager[worst_b], 1.0, detail=detail))
    rows32 = [r for r in m.get("rows", []) if r["batch"] == 32 and r["mode"] == "optimized" and r["model"] in VARIANTS]
    if rows32:
        worst = min(rows32, key=lambda r: r["efficiency"])
        ref = [r for r in m["rows"] if r["batch"] == 32 and r["model"] == REFERENCE]
        detail = "; ".join([f"{r['model']}: {100 * r['efficiency']:.0f} % ({r['gflops']:.0f} of "
                            f"{r['matmul_gflops']:.0f} GFLOP/s)" for r in rows32]
                           + [f"torchvision {r['mode']}: {100 * r['efficiency']:.0f} %" for r in ref])
        out.append(_target("classifier GFLOP/s / matmul GFLOP/s at batch 32, CPU (worst variant)",
                           worst["efficiency"], 0.5, detail=detail, unit="fraction"))
    return out


def _crops_targets(c: Dict[str, object]) -> List[Dict[str, object]]:
    rows = [r for r in c.get("rows", []) if r["boxes"] == 100]
    if not rows:
        return []
    gpu = c.get("device", "cpu") != "cpu"
    r = min(rows, key=lambda r: r["size"])
    detail = "; ".join(f"{x['size']} px: ours x{x['speedup_ours']:.2f}, no antialias x{x['speedup_ours_no_antialias']:.2f}"
                       for x in rows)
    return [_target(f"crops at 100 boxes vs per-box loop, {'GPU' if gpu else 'CPU'} ({r['size']} px)",
                    r["speedup_ours"], 20.0 if gpu else 1.0, detail=detail)]


def _pipeline_targets(p: Dict[str, object]) -> List[Dict[str, object]]:
    rows = [r for r in p.get("rows", []) if r["boxes"] == 20]
    if not rows:
        return []
    out = []
    worst = min(rows, key=lambda r: r["gflops_ratio"])
    detail = "; ".join(f"{r['variant']} w{r['width']}: {r['second_stage_gflops']:.0f} vs {r['detector_gflops']:.0f}"
                       for r in rows)
    out.append(_target("second stage GFLOP/s / detector GFLOP/s at 20 boxes (worst variant/width)",
                       worst["gflops_ratio"], 1.0, detail=detail))
    if p.get("device", "cpu") != "cpu":
        worst = max(rows, key=lambda r: r["second_stage_vs_detector"])
        out.append(_target("GPU: second stage latency / detector latency at 20 boxes (worst variant/width)",
                           worst["second_stage_vs_detector"], 0.10, higher_is_better=False, unit="fraction"))
    return out


def _memory_targets(mem: Dict[str, object]) -> List[Dict[str, object]]:
    if "growth_mb" not in mem:
        return []
    return [_target(f"RSS growth over {mem['images']} images", mem["growth_mb"], 50.0, higher_is_better=False,
                    unit="MB", detail=f"slope {mem['slope_mb_per_1000_images']:.1f} MB per 1000 images")]


def _tradeoff_targets(t: Dict[str, object]) -> List[Dict[str, object]]:
    """Routing: the routed row >= the best fixed row in every size bucket, and >= 2 points above it overall."""
    out = []
    for ds, goal in (t.get("routing_goal") or {}).items():
        if not goal:
            continue
        detail = "; ".join(f"{b}: {v['diff_points']:+.1f} vs {v['best_row']}" for b, v in goal["buckets"].items())
        if goal["worst_bucket_diff_points"] is not None:
            out.append(_target(f"routed top-1 - best fixed row, worst size bucket ({ds}, points)",
                               goal["worst_bucket_diff_points"], 0.0, detail=detail, unit="points"))
        if goal["overall_diff_points"] is not None:
            out.append(_target(f"routed top-1 - best fixed row, overall ({ds}, points)", goal["overall_diff_points"],
                               2.0, detail=detail, unit="points"))
    return out


def _routing_targets(r: Dict[str, object]) -> List[Dict[str, object]]:
    """Routing cost: the routed classifier's crops/s at a realistic mix >= 0.9x v3_79's (full width)."""
    rows = [x for x in r.get("rows", []) if x["model"] == "routed (auto)"]
    if not rows:
        return []
    x = max(rows, key=lambda x: x["width"])
    return [_target(f"routed crops/s / v3_79 crops/s, realistic box sizes, width {x['width']:g}", x["ratio_vs_v3_79"],
                    0.9, detail="route shares " + ", ".join(f"{a} {100 * v:.0f} %" for a, v in r["route_shares"].items()))]


def evaluate_targets(results: Dict[str, object]) -> List[Dict[str, object]]:
    out: List[Dict[str, object]] = []
    for key, fn in (("models", _models_targets), ("crops", _crops_targets), ("pipeline", _pipeline_targets),
                    ("memory", _memory_targets), ("video", video_targets), ("tradeoff", _tradeoff_targets),
                    ("routing", _routing_targets)):
        section = results.get(key)
        if isinstance(section, dict) and "error" not in section:
            out.extend(fn(section))
    return out


def video_targets(v: Dict[str, object]) -> List[Dict[str, object]]:
    """Video: classifier calls <= 1/4 of every box every frame; track-voted top-1 >= per-frame + 5."""
    out = [_target("video: classifier calls, track policy / every box every frame", v["calls_ratio"], 0.25,
                   higher_is_better=False, unit="fraction",
                   detail=f"{v['classifier_calls']['policy']} vs {v['classifier_calls']['every_box']} calls")]
    acc = v["accuracy"]
    if acc["track_weighted"]["all"] is not None and acc["per_frame"]["all"] is not None:
        gain = acc["track_weighted"]["all"] - acc["per_frame"]["all"]
        out.append(_target("video: shown-label top-1, track vote (weighted) - per-frame", gain, 0.05, unit="fraction",
                           detail=f"{100 * acc['track_weighted']['all']:.1f} % vs "
                                  f"{100 * acc['per_frame']['all']:.1f} %"))
    return out
