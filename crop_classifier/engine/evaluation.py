"""Classification metrics (top-1, top-5, per-class accuracy, confusion matrix) and their outputs."""
from __future__ import annotations

import io
import logging
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from tqdm import tqdm

from ..models.inference import InferenceClassifier, build_inference_classifier
from ..utils.io import atomic_save_json, atomic_write_bytes

logger = logging.getLogger(__name__)

#: Edges (pixels, shorter box side in the original image) of the accuracy-by-size breakdown.
SIZE_BIN_EDGES = (0, 16, 24, 32, 48, 64, 96, 128, math.inf)
#: The native size buckets (``size_buckets``): the box's longer side in the original image, without the
#: crop's context margin, ``[lo, hi)`` px, whatever the classifier (routed or not), so rows compare.
SIZE_BUCKETS = (("<32", 0, 32), ("32-96", 32, 96), ("96-200", 96, 200), (">200", 200, math.inf))


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[K, K]`` counts; row = true class, column = predicted class."""
    idx = labels.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def accuracy_by_size(correct: torch.Tensor, box_sizes: torch.Tensor,
                     edges: Sequence[float] = SIZE_BIN_EDGES) -> List[Dict[str, Any]]:
    """Top-1 per box-size bin ``[lo, hi)``; bins without boxes are left out."""
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        inside = (box_sizes >= lo) & (box_sizes < hi)
        n = int(inside.sum())
        if n:
            out.append({"min_px": lo, "max_px": hi if math.isfinite(hi) else None, "num_samples": n,
                        "top1": float(correct[inside].sum()) / n})
    return out


def accuracy_by_size_bucket(correct: torch.Tensor, long_sides: torch.Tensor) -> List[Dict[str, Any]]:
    """Top-1 and count per ``SIZE_BUCKETS`` bucket of ``long_sides [N]`` (px; NaN, e.g. a background
    placeholder, falls in none). Every bucket is listed; an empty one has ``top1`` ``None``."""
    out = []
    for name, lo, hi in SIZE_BUCKETS:
        inside = (long_sides >= lo) & (long_sides < hi)
        n = int(inside.sum())
        out.append({"bucket": name, "min_px": lo, "max_px": hi if math.isfinite(hi) else None, "num_samples": n,
                    "top1": float(correct[inside].sum()) / n if n else None})
    return out


def format_size_buckets(buckets: Sequence[Dict[str, Any]]) -> str:
    """``size_buckets`` as a small text table (box's longer side, px | crops | top-1)."""
    lines = [f"{'box side (px)':>13} {'crops':>7} {'top-1':>7}"]
    for b in buckets:
        top1 = "-" if b["top1"] is None else f"{100 * b['top1']:.2f}%"
        lines.append(f"{b['bucket']:>13} {b['num_samples']:>7d} {top1:>7}")
    return "\n".join(lines)


def compute_metrics(scores: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str], *,
                    box_sizes: Optional[torch.Tensor] = None,
                    box_long_sides: Optional[torch.Tensor] = None) -> Dict[str, Any]:
    """Metrics of ``scores [N, K]`` (logits or probabilities) against ``labels [N]``.

    ``top5`` uses ``min(5, K)`` guesses. A class without samples has per-class accuracy ``None`` and is left
    out of ``mean_class_accuracy``. With ``box_sizes [N]`` (shorter box side, pixels) the result also holds
    ``accuracy_by_box_size``; with ``box_long_sides [N]`` (longer box side without context, pixels)
    ``size_buckets`` (``accuracy_by_size_bucket``).
    """
    num_classes = len(class_names)
    if scores.ndim != 2 or scores.shape[1] != num_classes:
        raise ValueError(f"scores must be [N, {num_classes}] for {num_classes} class names, got {tuple(scores.shape)}")
    if labels.shape != scores.shape[:1]:
        raise ValueError(f"labels must be [N] = [{scores.shape[0]}], got {tuple(labels.shape)}")
    n = int(labels.numel())
    if n == 0:
        raise ValueError("cannot compute metrics on an empty evaluation set")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got range [{int(labels.min())}, {int(labels.max())}]")
    k = min(5, num_classes)
    topk = scores.topk(k, dim=1).indices
    hit_k = (topk == labels[:, None]).any(dim=1)
    preds = topk[:, 0]
    cm = confusion_matrix(preds, labels, num_classes)
    support = cm.sum(dim=1)
    correct = cm.diagonal()
    per_class = {
        name: (float(correct[i]) / float(support[i]) if support[i] > 0 else None) for i, name in enumerate(class_names)
    }
    present = [v for v in per_class.values() if v is not None]
    extra = {}
    if box_sizes is not None:
        if box_sizes.shape != labels.shape:
            raise ValueError(f"box_sizes must be [N] = [{n}], got {tuple(box_sizes.shape)}")
        extra["accuracy_by_box_size"] = accuracy_by_size(preds == labels, box_sizes)
    if box_long_sides is not None:
        if box_long_sides.shape != labels.shape:
            raise ValueError(f"box_long_sides must be [N] = [{n}], got {tuple(box_long_sides.shape)}")
        extra["size_buckets"] = accuracy_by_size_bucket(preds == labels, box_long_sides)
    return {
        "num_samples": n,
        "top1": float(correct.sum()) / n,
        "top5": float(hit_k.sum()) / n,
        "top5_k": k,
        "mean_class_accuracy": sum(present) / len(present),
        "per_class_accuracy": per_class,
        "per_class_support": {name: int(support[i]) for i, name in enumerate(class_names)},
        "class_names": list(class_names),
        "confusion_matrix": cm.tolist(),
        **extra,
    }


#: Classes the confusion picture shows as a matrix (the most frequent true classes; the rest in "other").
CONFUSION_CLASSES = 20
#: Largest off-diagonal cells listed beside the matrix.
TOP_CONFUSIONS = 15


def confusion_view(cm: Sequence[Sequence[int]], class_names: Sequence[str], top: int = CONFUSION_CLASSES,
                   pairs: int = TOP_CONFUSIONS) -> Dict[str, Any]:
    """What the confusion picture shows: a readable part of a confusion matrix of any number of classes.

    Args:
        cm: ``[K, K]`` counts, rows = true class, columns = predicted class.
        class_names: ``[K]``. top: the matrix shows at most this many classes. pairs: confusions listed.

    Returns:
        ``classes``: the ``top`` classes with the most true samples (all when K <= top), most frequent first
        (in class order when all are shown); ``matrix``: ``[T, T (+1)]`` row-normalised over all K predicted
        classes, the last column ``other`` (predictions outside the shown classes) when some are left out;
        ``columns``: its column names; ``support``: true samples per shown class; ``confusions``: the
        ``pairs`` largest off-diagonal cells of the whole matrix as (true, predicted, count, fraction of the
        true class), largest first.
    """
    cm_t = torch.as_tensor(cm, dtype=torch.float64).reshape(len(class_names), len(class_names))
    support = cm_t.sum(dim=1)
    k = len(class_names)
    shown = list(range(k)) if k <= top else torch.argsort(-support, stable=True)[:top].tolist()
    rows = cm_t[shown] / support[shown].clamp(min=1).unsqueeze(1)
    matrix = rows[:, shown]
    columns = [class_names[i] for i in shown]
    if k > top:
        matrix = torch.cat([matrix, (rows.sum(dim=1) - matrix.sum(dim=1)).clamp(min=0).unsqueeze(1)], dim=1)
        columns.append("other")
    off = cm_t.clone()
    off.fill_diagonal_(0)
    flat = torch.argsort(-off.flatten(), stable=True)[:pairs]
    confusions = [(class_names[int(i) // k], class_names[int(i) % k], int(off.flatten()[i]),
                   float(off.flatten()[i] / support[int(i) // k].clamp(min=1))) for i in flat if off.flatten()[i] > 0]
    return {"classes": [class_names[i] for i in shown], "matrix": matrix.numpy(), "columns": columns,
            "support": [int(support[i]) for i in shown], "confusions": confusions}


def confusion_figure(cm: Sequence[Sequence[int]], class_names: Sequence[str], title: str = "Confusion matrix",
                     top: int = CONFUSION_CLASSES):
    """A matplotlib ``Figure`` (Agg canvas) of ``confusion_view``: the row-normalised matrix of the most
    frequent classes with counts, and, when there are off-diagonal cells, the largest confusions as bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    view = confusion_view(cm, class_names, top)
    t, c = view["matrix"].shape
    counts = torch.as_tensor(cm, dtype=torch.float64)
    fig = Figure(figsize=(5 + 0.45 * c + (6 if view["confusions"] else 0), 4 + 0.4 * t))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2 if view["confusions"] else 1, 1)
    im = ax.imshow(view["matrix"], cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ax.set_xticks(range(c))
    ax.set_yticks(range(t))
    ax.set_xticklabels(view["columns"], rotation=60, ha="right", fontsize=9)
    ax.set_yticklabels([f"{n} ({s})" for n, s in zip(view["classes"], view["support"])], fontsize=9)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class (crops)")
    left_out = len(class_names) - t
    ax.set_title(title + (f"\nthe {t} most frequent of {len(class_names)} classes" if left_out else ""), fontsize=10)
    index = {n: i for i, n in enumerate(class_names)}
    for i, name in enumerate(view["classes"]):
        for j, col in enumerate(view["columns"]):
            n = counts[index[name]].sum() * view["matrix"][i, j] if col == "other" else counts[index[name], index[col]]
            if n > 0:
                ax.text(j, i, int(round(float(n))), ha="center", va="center", fontsize=7,
                        color="white" if view["matrix"][i, j] > 0.5 else "black")
    if view["confusions"]:
        bx = fig.add_subplot(1, 2, 2)
        pairs = view["confusions"][::-1]  # largest at the top
        bx.barh(range(len(pairs)), [p[2] for p in pairs], color="#d55e00")
        bx.set_yticks(range(len(pairs)))
        bx.set_yticklabels([f"{a} -> {b} ({f:.0%})" for a, b, _, f in pairs], fontsize=9)
        bx.set_xlabel("crops")
        bx.set_title("largest confusions (true -> predicted, share of the true class)", fontsize=10)
    fig.tight_layout()
    return fig


def plot_confusion_matrix(cm: Sequence[Sequence[int]], class_names: Sequence[str], path: Path,
                          title: str = "Confusion matrix") -> Path:
    """``confusion_figure`` as a PNG, written atomically (matplotlib's Agg canvas, no GUI)."""
    buf = io.BytesIO()
    confusion_figure(cm, class_names, title).savefig(buf, format="png", dpi=100)
    return atomic_write_bytes(path, buf.getvalue())


#: The inference form's precision for the engine's autocast dtype (SOLVER.AMP_DTYPE; None: no AMP).
_PRECISION_OF = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def inference_form(model: torch.nn.Module, meta: Dict[str, Any], device: torch.device, *, amp_dtype=None,
                   channels_last: bool = False, route_thresholds: Optional[Sequence[float]] = None):
    """``model`` (left untouched) in the one inference form, at the precision of the engine's AMP setting (a
    ``RoutedClassifier`` for a routed model: each batch runs the route its crops' side names)."""
    return build_inference_classifier(model, meta, device=device, precision=_PRECISION_OF[amp_dtype],
                                      channels_last=channels_last, route_thresholds=route_thresholds)


def predict(classifier: InferenceClassifier, loader, *, progress: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Runs ``classifier`` (see ``inference_form``) over ``loader``'s crops in [0, 1]; returns (logits [N, K]
    float32 on CPU, labels [N])."""
    all_scores, all_labels = [], []
    for images, labels in tqdm(loader, desc="evaluate", disable=not progress, leave=False):
        all_scores.append(classifier.logits(images).cpu())
        all_labels.append(labels.cpu())
    if not all_scores:
        raise ValueError("the evaluation loader produced no batches (empty dataset?)")
    return torch.cat(all_scores), torch.cat(all_labels)


def loader_sample_order(loader) -> np.ndarray:
    """The sample indices in the order ``loader``'s batch sampler yields them (plain indices or the
    ``(index, size)`` pairs of ``RoutedBatchSampler``)."""
    return np.array([int(i[0]) if isinstance(i, (tuple, list)) else int(i)
                     for batch in loader.batch_sampler for i in batch], dtype=np.int64)


def predict_samples(classifier, loader, *, progress: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """``predict``, returned in sample order (a routed test loader yields its samples route by route); every
    sample must appear once."""
    scores, labels = predict(classifier, loader, progress=progress)
    order = loader_sample_order(loader)
    if len(order) != len(scores) or len(np.unique(order)) != len(order):
        raise ValueError(f"the evaluation loader yielded {len(order)} crops, not each of its samples once")
    inverse = torch.from_numpy(np.argsort(order, kind="stable"))
    return scores[inverse], labels[inverse]


def box_sides(samples: Sequence) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(shorter, longer)`` side (px, no context) of each sample's box, in sample order."""
    boxes = torch.tensor(np.stack([np.asarray(s[1], np.float64).reshape(4) for s in samples]))
    wh = boxes[:, 2:] - boxes[:, :2]
    return wh.min(dim=1).values.float(), wh.max(dim=1).values.float()


def box_sizes_in_loader_order(loader, samples: Sequence) -> torch.Tensor:
    """Shorter side of each sample's box, in the order ``loader``'s batch sampler yields the samples."""
    return box_sides(samples)[0][torch.from_numpy(loader_sample_order(loader))]


def write_results(metrics: Dict[str, Any], output_dir: Path, *, extra: Dict[str, Any] = None) -> Dict[str, Path]:
    """``results.json`` (atomic) and ``confusion_matrix.png`` in ``output_dir``."""
    output_dir = Path(output_dir)
    results = dict(metrics)
    if extra:
        results.update(extra)
    paths = {
        "results": atomic_save_json(output_dir / "results.json", results),
        "confusion_matrix": plot_confusion_matrix(
            metrics["confusion_matrix"], metrics["class_names"], output_dir / "confusion_matrix.png",
            title=f"top-1 {metrics['top1']:.1%} on {metrics['num_samples']} crops",
        ),
    }
    logger.info("evaluation: top-1 %.2f%%, top-5 %.2f%%, mean class accuracy %.2f%% (%d crops) -> %s",
                100 * metrics["top1"], 100 * metrics["top5"], 100 * metrics["mean_class_accuracy"],
                metrics["num_samples"], output_dir)
    return paths
