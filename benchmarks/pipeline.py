"""Detector alone vs detector + second stage, at 1, 20 and 100 boxes per image.

The first stage is Detectron2's model-zoo R50-FPN Faster R-CNN (``crop_classifier.detectors``) with random
weights (none can be downloaded here; timing does not depend on the values), its score threshold at 0
and its top-k at the largest box count, so the second stage always sees exactly N boxes. The second stage
is ``crop_classifier.second_stage.SecondStage`` (crops from the full-resolution image, classifier, fusion)
around each classifier variant at each width, in its inference form (``models.inference.build_inference_classifier``).

Detector and second-stage calls are interleaved in the same rounds; "detector + second stage" is the sum of
their medians. Achieved GFLOP/s use fvcore counts: Detectron2's ``FlopCountAnalysis`` on the detector's
actual input, and N x the classifier's per-crop count for the second stage.
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch

from crop_classifier.crops import DEFAULT_CONTEXT
from crop_classifier.structures import ImageRecord
from crop_classifier.models import build_classifier
from crop_classifier.second_stage import SecondStage
from crop_classifier.detectors.detectron2_model import Detectron2Detector, detectron2_config

from .crops import random_image
from .models import count_gmacs
from .timing import time_interleaved


def _random_weights_detector(device: str, max_boxes: int, min_size_test: int, config_file: Optional[str] = None):
    """The model-zoo Faster R-CNN (or ``config_file``) with random weights, through the project's Detectron2
    first stage (which needs a weights file: the random state dict is saved to a temporary one)."""
    from detectron2.modeling import build_model

    opts = ["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "TEST.DETECTIONS_PER_IMAGE", str(max_boxes),
            "INPUT.MIN_SIZE_TEST", str(min_size_test), "MODEL.DEVICE", "cpu"]
    cfg = detectron2_config(config_file, opts)
    torch.manual_seed(0)
    model = build_model(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "random_r50_fpn.pth")
        torch.save({"model": model.state_dict()}, path)
        del model
        det = Detectron2Detector(config_file, path, device=device, score_thresh=0.0, opts=opts[:-2])
    return det


def calibrate_frozen_bn(model: torch.nn.Module, inputs) -> int:
    """Set every FrozenBatchNorm's statistics to those of its input on ``inputs`` (in one forward pass,
    layer by layer), as a trained backbone's BN would be. Without this, random ResNet weights behind
    identity BNs blow activations up to ~1e3, the RPN's boxes collapse into a few slivers and the box head
    sees a handful of proposals instead of 1000, which would under-state the detector's cost."""
    from detectron2.layers import FrozenBatchNorm2d

    def pre_hook(module, args):
        x = args[0]
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))

    handles = [m.register_forward_pre_hook(pre_hook) for m in model.modules() if isinstance(m, FrozenBatchNorm2d)]
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        for h in handles:
            h.remove()
    return len(handles)


def _detector_input(det, record) -> dict:
    img = record.image if det.input_format == "RGB" else record.image[:, :, ::-1]
    resized = det.aug.get_transform(img).apply_image(img)
    return {"image": torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)).astype("float32")),
            "height": img.shape[0], "width": img.shape[1]}


def detector_gflop(det, record) -> float:
    """fvcore count (x2: multiply-adds -> FLOP) of one detector forward on this image, preprocessing included
    in the input it sees (Detectron2's ``FlopCountAnalysis`` understands its list-of-dicts input)."""
    from detectron2.utils.analysis import FlopCountAnalysis

    with torch.no_grad():
        fca = FlopCountAnalysis(det.model, [_detector_input(det, record)])
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        return 2.0 * fca.total() / 1e9


def run_pipeline(
    *,
    device: str = "cpu",
    box_counts: Sequence[int] = (1, 20, 100),
    variants: Sequence[str] = ("v3_79", "v3_151", "v3_299"),
    widths: Sequence[float] = (1.0, 0.5),
    image_wh=(640, 426),
    min_size_test: int = 800,
    rounds: int = 2,
    config_file: Optional[str] = None,
    log: Callable[[str], None] = print,
) -> Dict[str, object]:
    """``config_file``: a Detectron2 YAML instead of the model zoo's R50-FPN (the test suite uses the tiny
    R-18 one)."""

    W, H = image_wh
    max_boxes = max(box_counts)
    det = _random_weights_detector(device, max_boxes, min_size_test, config_file)
    names = det.class_names
    record = ImageRecord("synthetic.jpg", random_image(W, H, seed=1))
    image_t = torch.from_numpy(record.image).permute(2, 0, 1).to(device)  # CHW uint8 view on the device

    calibrate_frozen_bn(det.model, [_detector_input(det, record)])
    dets = det.detect([record])[0]
    n_det = len(dets)
    if n_det < max_boxes:
        raise RuntimeError(f"the random-weight detector returned {n_det} < {max_boxes} boxes at score threshold 0")
    boxes = torch.from_numpy(dets.boxes[:max_boxes])
    classes = torch.from_numpy(dets.classes[:max_boxes])
    scores = torch.from_numpy(dets.scores[:max_boxes])
    sides = (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)
    median_side = float(sides.max(dim=1).values.median())
    det_gflop = detector_gflop(det, record)
    log(f"  pipeline: detector {det.cfg.MODEL.META_ARCHITECTURE} {config_file or 'R50-FPN'}, {W}x{H} image resized to short side "
        f"{min_size_test}, {det_gflop:.1f} GFLOP, {n_det} detections at score >= 0")

    stages, cls_gmacs = {}, {}
    for v in variants:
        for w in widths:
            clf = build_classifier(v, len(names), width=w, aux_logits=False).eval()
            cls_gmacs[(v, w)] = count_gmacs(clf, clf.input_size)
            meta = {"arch": v, "class_names": names, "input_size": clf.input_size, "width": w}
            stages[(v, w)] = SecondStage.from_model(clf, meta, names, device=device, context=DEFAULT_CONTEXT,
                                                    fusion="replace")

    def detect():
        return det.detect([record])

    rows: List[Dict[str, object]] = []
    for n in box_counts:
        b, c, s = boxes[:n].to(device), classes[:n].to(device), scores[:n].to(device)
        fns = {"detector": detect}
        for key, stage in stages.items():
            def second(stage=stage, b=b, c=c, s=s):
                with torch.inference_mode():
                    return stage([image_t], [b], [c], [s])
            fns[key] = second
        log(f"  pipeline {n} boxes: detector + {len(stages)} second stages, {rounds} rounds")
        for key, fn in fns.items():  # warm the new batch shapes; the detector ran above (its detections)
            if key != "detector":
                fn()
        t = time_interleaved(fns, rounds=rounds, warmup=0, device=device)
        det_t = t.pop("detector")
        for (v, w), tk in t.items():
            ss_gflop = 2.0 * cls_gmacs[(v, w)] * n
            total = det_t.median + tk.median
            rows.append({
                "boxes": n, "variant": v, "width": w,
                "detector_ms": 1e3 * det_t.median, "second_stage_ms": 1e3 * tk.median,
                "second_stage_p95_ms": 1e3 * tk.p95, "total_ms": 1e3 * total,
                "second_stage_share": tk.median / total, "second_stage_vs_detector": tk.median / det_t.median,
                "detector_gflops": det_gflop / det_t.median, "second_stage_gflops": ss_gflop / tk.median,
                "gflops_ratio": (ss_gflop / tk.median) / (det_gflop / det_t.median),
                "n_calls": tk.n,
            })
            r = rows[-1]
            log(f"    {v} w{w}: {r['second_stage_ms']:.0f} ms ({100 * r['second_stage_share']:.1f} % of "
                f"{r['total_ms']:.0f} ms), {r['second_stage_gflops']:.0f} vs detector {r['detector_gflops']:.0f} GFLOP/s")
    return {
        "device": device, "image": f"{W}x{H}", "min_size_test": min_size_test,
        "detector": f"Detectron2 {os.path.basename(config_file) if config_file else 'model zoo COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml'}, random weights "
                    "(FrozenBN statistics calibrated on the image), score threshold 0, fixed top-k",
        "detector_box_median_side": median_side,
        "detector_gflop": det_gflop, "detections_at_score_0": n_det, "context": DEFAULT_CONTEXT,
        "classifier_gmacs": {f"{v}@{w}": g for (v, w), g in cls_gmacs.items()},
        "rows": rows,
    }
