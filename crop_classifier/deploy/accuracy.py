"""Top-1 of several classifiers on the same held-out crops (int8 vs fp32, runtime vs torch).

Crops come from the engine's dataset loading (``load_datasets``/``CropDataset``, un-augmented, cut with the
checkpoint's crop spec), as ``tools/evaluate.py`` sees them: crops in [0, 1], which every classifier form takes.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Sequence

import torch

from ..errors import UsageError
from ..structures import ClassifierMeta, object_class_names
from ..data import CropDataset
from ..engine.data import load_datasets


def held_out_top1(classifiers: Mapping[str, Any], meta: ClassifierMeta, datasets: Sequence[str], *,
                  min_size: float = 0.0, batch_size: int = 64) -> Dict[str, Any]:
    """``{"crops": n, "top1": {name: accuracy}, "agreement": {name: top-1 agreement with the first}}``."""
    samples, _ = load_datasets(list(datasets), class_names=object_class_names(meta), min_size=min_size)
    if not samples:
        raise UsageError(f"--eval-dataset {', '.join(datasets)}: no crops (min size {min_size})")
    order = sorted(range(len(samples)), key=lambda i: samples[i][0])  # grouped by image: decoded once
    dataset = CropDataset([samples[i] for i in order], meta.input_size, context=meta.crop.context,
                          mode=meta.crop.mode, train=False)
    preds = {name: [] for name in classifiers}
    labels = []
    for start in range(0, len(dataset), batch_size):
        x, y = dataset.__getitems__(range(start, min(start + batch_size, len(dataset))))
        labels.append(y)
        for name, clf in classifiers.items():
            preds[name].append(clf(x).argmax(1).cpu())
    y = torch.cat(labels)
    p = {k: torch.cat(v) for k, v in preds.items()}
    first = next(iter(p.values()))
    return {"crops": int(len(y)), "datasets": list(datasets), "min_size": min_size,
            "top1": {k: float((v == y).float().mean()) for k, v in p.items()},
            "agreement": {k: float((v == first).float().mean()) for k, v in p.items()}}
