"""Which form a classifier runs in when nobody says (``precision=None``): one that follows the hardware.

On a CPU with native bf16 (AVX-512 BF16 or AMX: ``models.inference.cpu_has_native_bf16``) the classifier runs
bf16 on the fastest runtime for it: OpenVINO (its ``INFERENCE_PRECISION_HINT`` bf16; measured 5.86x the ONNX
Runtime fp32 default on a 2-core AMX machine, docs/deploy.md), else torch's bf16 autocast (2.63x). Elsewhere
fp32 on ``loader.DEFAULT_CPU_BACKEND`` (ONNX Runtime): without native bf16, bf16 is emulated and slower than
fp32. ``precision="fp32"`` is exact everywhere.

The bf16 guard: when a bf16 form is first built for a checkpoint, it and the fp32 torch form classify the same
crops, and bf16 is kept only if their top-1 decisions differ on at most ``GUARD_MAX_DISAGREEMENT`` (1 %) of
them; otherwise the classifier falls back to fp32 and says so. The crops (``guard_crops``): the held-out
datasets the checkpoint's meta records (``held_out_datasets``, or an int8 checkpoint's
``quantization.eval.datasets``) when they load, else ``GUARD_CROPS`` deterministic synthetic crops
(``data.synthetic.render_scene``, fixed seeds, every object's ground-truth box cut with the checkpoint's crop
spec): the checkpoint's own classes need not be those shapes, but the test is whether bf16 changes decisions,
which any realistic crops measure. The verdict is cached (``cache_root()/bf16_verdicts.json``, keyed by the
checkpoint's content hash and the runtime), so the check runs once per checkpoint.

Every classifier ``load_classifier`` returns carries ``form``: ``{"backend", "precision", "reason"}``, which
``describe`` and ``tools/infer.py``'s ``summary.json`` (``classifier_form``) report.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..crops import extract_crops
from ..data import CropDataset
from ..data.synthetic import render_scene
from ..engine.data import load_datasets
from ..models import inference as inference_mod
from ..structures import ClassifierMeta
from ..utils.io import atomic_write_text

logger = logging.getLogger(__name__)
GUARD_CROPS = 256
GUARD_MAX_DISAGREEMENT = 0.01
GUARD_SEED = 20261207
VERDICTS_FILE = "bf16_verdicts.json"
# Measured on a 2-core CPU with AVX-512 BF16 and AMX (docs/deploy.md): crops/s relative to ONNX Runtime fp32.
BF16_SPEEDUP = {"openvino": 5.86, "torch": 2.63}


@dataclass
class Form:
    """Which form runs and why: ``backend`` (torch | onnxruntime | openvino), ``precision`` (fp32 | bf16 |
    fp16 | int8), ``reason`` (one sentence for logs and summary.json)."""

    backend: str
    precision: str
    reason: str

    def to_dict(self) -> Dict[str, str]:
        return asdict(self)


def auto_plan(backend: Optional[str], device: torch.device, default_backend: str,
              installed: Callable[[str], bool]) -> Form:
    """The form ``precision=None`` asks for, before the guard. ``backend``: the one asked for (None: pick);
    ``default_backend``: the fp32 CPU default; ``installed(name)``: whether a runtime can run a checkpoint."""
    if device.type != "cpu":
        return Form(backend or "torch", "fp32", f"fp32 on {device.type} (--precision bf16/fp16 for autocast)")
    fp32_backend = backend or (default_backend if installed(default_backend) else "torch")
    if not inference_mod.cpu_has_native_bf16():
        return Form(fp32_backend, "fp32", "this CPU has no native bf16 (AVX-512 BF16/AMX): fp32, the fastest "
                                          "float form here")
    if backend == "onnxruntime":
        return Form(backend, "fp32", "native bf16 CPU, but ONNX Runtime's CPU provider has no bf16 convolutions: "
                                     "fp32 (--backend openvino or torch for bf16)")
    chosen = backend or ("openvino" if installed("openvino") else "torch")
    return Form(chosen, "bf16", f"native bf16 on this CPU (AVX-512 BF16/AMX): bf16 on {chosen}, measured "
                                f"{BF16_SPEEDUP[chosen]:.2f}x the fp32 default")


def _synthetic_crops(meta: ClassifierMeta, size: int, count: int) -> torch.Tensor:
    crops: List[torch.Tensor] = []
    n, scene = 0, 0
    while n < count:
        image, objects = render_scene(np.random.default_rng([GUARD_SEED, scene]), 384)
        scene += 1
        if not objects:
            continue
        boxes = torch.tensor([[o["bbox"][0], o["bbox"][1], o["bbox"][0] + o["bbox"][2], o["bbox"][1] + o["bbox"][3]]
                              for o in objects], dtype=torch.float32)
        rgb = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).permute(2, 0, 1)
        crops.append(extract_crops(rgb, boxes, size, context=meta.crop.context, mode=meta.crop.mode))
        n += len(boxes)
    return torch.cat(crops)[:count]


def _held_out_names(meta: ClassifierMeta) -> Tuple[List[str], float]:
    extra = meta.extra
    recorded = extra.get("held_out_datasets") or ((extra.get("quantization") or {}).get("eval") or {}).get("datasets")
    min_size = float(((extra.get("quantization") or {}).get("eval") or {}).get("min_size") or 0.0)
    return [str(d) for d in recorded or []], min_size


def guard_crops(meta: ClassifierMeta, size: int, count: int = GUARD_CROPS) -> Tuple[torch.Tensor, str]:
    """Crops ``[n <= count, 3, size, size]`` in [0, 1] for the bf16 guard and where they came from (module doc)."""
    names, min_size = _held_out_names(meta)
    if names:
        try:
            samples, _ = load_datasets(names, min_size=min_size)  # the decisions are compared, not scored: no labels
            pick = np.unique(np.linspace(0, len(samples) - 1, min(count, len(samples))).round().astype(int))
            dataset = CropDataset([samples[i] for i in pick], size, context=meta.crop.context, mode=meta.crop.mode,
                                  train=False)
            return dataset.__getitems__(range(len(dataset)))[0], f"{len(pick)} held-out crops of {', '.join(names)}"
        except (OSError, ValueError, KeyError) as e:  # recorded but not here: the synthetic crops do
            logger.info("bf16 guard: the recorded held-out datasets do not load here (%s); synthetic crops", e)
    return _synthetic_crops(meta, size, count), f"{count} synthetic crops (data.synthetic, seed {GUARD_SEED})"


def _routes(clf: Any) -> List[Any]:
    return list(clf.classifiers) if getattr(clf, "routes", None) is not None else [clf]


def compare_decisions(fp32: Any, bf16: Any, meta: ClassifierMeta, count: int = GUARD_CROPS) -> Dict[str, Any]:
    """Top-1 of ``fp32`` and ``bf16`` (same classifier, two forms; routed: route by route) on guard crops:
    ``{"crops", "disagreement", "max_abs_dprob", "source"}``."""
    differ, total, dprob, sources = 0, 0, 0.0, []
    for ref, low in zip(_routes(fp32), _routes(bf16)):
        x, source = guard_crops(meta, int(ref.meta.input_size), count)
        sources.append(source)
        for start in range(0, len(x), 32):
            a, b = ref(x[start:start + 32]).float(), low(x[start:start + 32]).float()
            differ += int((a.argmax(1) != b.argmax(1)).sum())
            dprob = max(dprob, float((a - b).abs().max()))
        total += len(x)
    return {"crops": total, "disagreement": differ / max(total, 1), "max_abs_dprob": dprob,
            "source": "; ".join(dict.fromkeys(sources))}


def _read(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def bf16_verdict(cache: Path, key: str, run: Callable[[], Dict[str, Any]]) -> Dict[str, Any]:
    """The cached guard verdict for ``key`` (checkpoint hash and runtime), or ``run()``'s, then cached:
    ``{"ok": bool, "crops", "disagreement", "max_abs_dprob", "source"}``. A cache that cannot be written
    only costs the check again next time."""
    path = cache / VERDICTS_FILE
    known = _read(path).get(key)
    if isinstance(known, dict) and "ok" in known:
        return known
    verdict = run()
    verdict["ok"] = verdict["disagreement"] <= GUARD_MAX_DISAGREEMENT
    try:
        cache.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({**_read(path), key: verdict}, indent=1, sort_keys=True))
    except OSError as e:
        logger.info("bf16 guard: cannot cache the verdict in %s (%s)", path, e)
    return verdict


def guard_reason(form: Form, verdict: Dict[str, Any]) -> str:
    """``form``'s reason with the guard's finding."""
    pct = 100 * verdict["disagreement"]
    if verdict["ok"]:
        return f"{form.reason}; bf16 keeps the decisions ({pct:.1f} % of {verdict['crops']} {_kind(verdict)} differ)"
    return (f"bf16 would change {pct:.1f} % of the top-1 decisions on {verdict['crops']} {_kind(verdict)} (more than "
            f"{100 * GUARD_MAX_DISAGREEMENT:g} %): fp32 instead")


def _kind(verdict: Dict[str, Any]) -> str:
    return "held-out crops" if "held-out" in str(verdict.get("source")) else "synthetic crops"


def form_of(clf: Any) -> Dict[str, str]:
    """The ``form`` record of a classifier ``load_classifier`` returned (one built otherwise: what it says of
    itself, reason unknown)."""
    form = getattr(clf, "form", None)
    if isinstance(form, dict):
        return dict(form)
    one = _routes(clf)[0]
    precision = "int8" if one.meta.extra.get("quantized") else getattr(one, "precision", "fp32")
    return Form(getattr(one, "backend", "torch"), precision, "built directly, not by load_classifier").to_dict()


def int8_advice(clf: Any) -> Optional[str]:
    """One line for ``tools/infer.py`` when the classifier runs a float form on a CPU where int8 is faster
    (int8 convolutions need AVX2; with VNNI/AMX they are the fastest form measured on every CPU kind here:
    docs/deploy.md); None otherwise."""
    form = form_of(clf)
    if form["precision"] == "int8" or torch.device(_routes(clf)[0].device).type != "cpu":
        return None
    features = inference_mod.cpu_features()
    if not (features["VNNI"] or features["AMX"]):
        return None
    kind = "AMX" if features["AMX"] else "VNNI"
    return (f"int8 is the fastest form on this CPU ({kind}); this run is {form['precision']}: make one with "
            "tools/quantize.py --weights CKPT --output INT8.onnx --config-file CONFIG (docs/deploy.md)")
