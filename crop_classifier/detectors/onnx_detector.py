"""``onnx:FILE.onnx``: any exported detector on ONNX Runtime, through an adapter for its output layout.

Layouts (read from the graph's outputs, or named with ``detector_format``):

- ``yolov8``: one output ``[B, 4+K, N]`` (YOLOv8 / YOLO11 as Ultralytics exports them): per anchor cx, cy, w, h
  at the model's input size, then K class scores. The image is letterboxed as Ultralytics does (ratio
  ``min(S/h, S/w)``, bilinear resize, centred padding with 114), boxes over the score threshold (default
  0.25) go through class-wise NMS (``torchvision.ops.batched_nms``, IoU 0.7, at most 300), then back to the
  original image's pixels, clipped to it.
- ``yolov5``: one output ``[B, N, 5+K]``: cx, cy, w, h, objectness, K class probabilities (score =
  objectness x class probability), letterboxed the same way; NMS IoU 0.45 (YOLOv5's own default).
- ``boxes``: end-to-end models with outputs named boxes / scores / labels, ``[B, N, ...]`` or ``[N, ...]``
  (torchvision's ONNX export, RT-DETR-style exports). Three inputs kinds: a ``[3, H, W]`` image
  (torchvision: the original image, boxes in its pixels); ``[B, 3, S, S]`` plus an ``[B, 2]`` original-size
  input (RT-DETR: the image resized to S x S, sizes as (w, h), boxes in original pixels); ``[B, 3, S, S]``
  alone (letterboxed as above, boxes at the input size mapped back).

Class names: the ``names`` metadata Ultralytics writes (a Python dict literal ``{0: 'person', ...}``), else
the ``categories`` passed in; when both are there their counts must agree, and so must the layout's K.
Images go in RGB, scaled to [0, 1] (float inputs) or as they are (uint8 inputs). Inputs with a dynamic batch
dimension get every record in one run; a fixed batch of 1 gets them one at a time.
"""
from __future__ import annotations

import ast
import logging
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torchvision.ops import batched_nms, box_convert

from ..errors import BackendUnavailableError, UsageError
from .base import FirstStage, ImageDetections, ImageRecord

logger = logging.getLogger(__name__)

FORMATS = ("yolov8", "yolov5", "boxes")
NMS_IOU = {"yolov8": 0.7, "yolov5": 0.45}  # each family's own predict default
DEFAULT_SCORE_THRESH = 0.25  # Ultralytics' predict default
DEFAULT_INPUT_SIZE = 640
MAX_DET = 300
MAX_NMS = 30000  # candidates per image into NMS, as Ultralytics
PAD_VALUE = 114
FORMAT_HELP = ("yolov8 ([1, 4+K, N]: cx, cy, w, h, K class scores), yolov5 ([1, N, 5+K]: cx, cy, w, h, "
               "objectness, K class probabilities), boxes (outputs named boxes, scores, labels)")


def import_onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise BackendUnavailableError(f"onnx: first stages need ONNX Runtime ({e}); install it with: "
                                      "pip install 'crop_classifier[onnx]'") from e
    return onnxruntime


@dataclass
class Layout:
    """How to feed a detector graph and read its outputs."""

    format: str  # one of FORMATS
    input_name: str
    input_rank: int  # 4: [B, 3, H, W]; 3: [3, H, W] (one image, original size)
    input_hw: Tuple[int, int]  # the model's input size (rank 4)
    fixed_batch: Optional[int]  # None: dynamic batch
    input_dtype: np.dtype
    outputs: Tuple[str, ...]  # yolo: (the output,); boxes: (boxes, scores, labels)
    num_classes: Optional[int] = None  # K of a yolo layout (boxes: unknown from the graph)
    size_input: Optional[str] = None  # RT-DETR's original-size input
    size_dtype: Optional[np.dtype] = None


_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(double)": np.float64}


def _dim(d) -> Optional[int]:
    return d if isinstance(d, int) and d > 0 else None


def parse_names(value: Optional[str], path: str) -> Optional[List[str]]:
    """The class names of Ultralytics' ``names`` metadata (``"{0: 'person', 1: 'bicycle'}"``), in id order."""
    if not value:
        return None
    try:
        names = ast.literal_eval(value)
    except (ValueError, SyntaxError) as e:
        raise UsageError(f"onnx:{path}: its 'names' metadata is not a Python dict literal ({e})") from e
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or sorted(names) != list(range(len(names))):
        raise UsageError(f"onnx:{path}: its 'names' metadata must map the ids 0..K-1 to names, got {value[:80]!r}")
    return [str(names[i]) for i in range(len(names))]


def _input_size(shape, meta: Dict[str, str]) -> Tuple[int, int]:
    h, w = (_dim(shape[-2]), _dim(shape[-1])) if len(shape) >= 2 else (None, None)
    if h and w:
        return h, w
    try:  # Ultralytics writes imgsz, e.g. "[640, 640]"
        size = ast.literal_eval(meta.get("imgsz", ""))
        return (int(size[0]), int(size[1])) if isinstance(size, (list, tuple)) else (int(size), int(size))
    except (ValueError, SyntaxError, TypeError, IndexError):
        return DEFAULT_INPUT_SIZE, DEFAULT_INPUT_SIZE


def _named(outputs, *words) -> Optional[str]:
    for o in outputs:
        if any(w in o.name.lower() for w in words):
            return o.name
    return None


def _yolo_format(shape, names: Optional[Sequence[str]]) -> Optional[str]:
    """yolov8 or yolov5 from a ``[B, a, b]`` output shape (the class count breaks a tie when known)."""
    a, b = _dim(shape[1]), _dim(shape[2])
    if names is not None:
        if a == len(names) + 4:
            return "yolov8"
        if b == len(names) + 5:
            return "yolov5"
    if a and (b is None or a < b) and a > 4:
        return "yolov8"
    if b and (a is None or b < a) and b > 5:
        return "yolov5"
    return None


def _describe(session) -> str:
    return ", ".join(f"{o.name} {list(o.shape)}" for o in session.get_outputs())


def detect_format(session, path: str, names: Optional[Sequence[str]], detector_format: Optional[str] = None) -> str:
    """The layout's name, from ``detector_format`` or the graph's outputs (``UsageError`` when none fits)."""
    outputs = session.get_outputs()
    if detector_format is not None:
        if detector_format not in FORMATS:
            raise UsageError(f"--detector-format {detector_format!r}: unknown layout; supported: {FORMAT_HELP}")
        return detector_format
    if _named(outputs, "box") and _named(outputs, "score") and _named(outputs, "label", "class"):
        return "boxes"
    yolo = [o for o in outputs if len(o.shape) == 3]
    fmt = _yolo_format(yolo[0].shape, names) if len(outputs) == 1 and yolo else None
    if fmt is None:
        raise UsageError(f"onnx:{path}: not a detector layout this first stage knows (outputs: {_describe(session)}); "
                         f"supported: {FORMAT_HELP}; name one with --detector-format")
    return fmt


def read_layout(session, path: str, fmt: str, meta: Dict[str, str]) -> Layout:
    """Inputs and outputs of the graph for layout ``fmt`` (``UsageError`` naming what does not fit)."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    image = max(inputs, key=lambda i: len(i.shape))
    if len(image.shape) not in (3, 4) or (len(image.shape) == 3 and fmt != "boxes"):
        raise UsageError(f"onnx:{path}: input {image.name} {list(image.shape)} is not an image batch [B, 3, H, W]")
    dtype = _DTYPES.get(image.type)
    if dtype not in (np.float32, np.float16, np.uint8):
        raise UsageError(f"onnx:{path}: input {image.name} has type {image.type}; expected float, float16 or uint8")
    common = dict(input_name=image.name, input_rank=len(image.shape), input_hw=_input_size(image.shape, meta),
                  fixed_batch=_dim(image.shape[0]) if len(image.shape) == 4 else 1, input_dtype=np.dtype(dtype))
    if fmt == "boxes":
        names = (_named(outputs, "box"), _named(outputs, "score"), _named(outputs, "label", "class"))
        if None in names:
            raise UsageError(f"onnx:{path}: layout boxes needs outputs named boxes, scores and labels; outputs: "
                             f"{_describe(session)}")
        size = next((i for i in inputs if i.name != image.name and len(i.shape) == 2), None)
        return Layout("boxes", outputs=names, size_input=size.name if size is not None else None,
                      size_dtype=np.dtype(_DTYPES.get(size.type, np.int64)) if size is not None else None, **common)
    out = outputs[0]
    if len(outputs) != 1 or len(out.shape) != 3:
        raise UsageError(f"onnx:{path}: layout {fmt} needs one [B, ., .] output; outputs: {_describe(session)}")
    channels = _dim(out.shape[1] if fmt == "yolov8" else out.shape[2])
    extra = 4 if fmt == "yolov8" else 5
    if channels is None or channels <= extra:
        raise UsageError(f"onnx:{path}: output {out.name} {list(out.shape)} does not fit layout {fmt} "
                         f"({FORMAT_HELP})")
    return Layout(fmt, outputs=(out.name,), num_classes=channels - extra, **common)


def letterbox(image: np.ndarray, hw: Tuple[int, int]) -> Tuple[np.ndarray, float, Tuple[int, int]]:
    """Ultralytics' letterbox (centred, no stride rounding): resize by ``min(H/h, W/w)``, pad with 114.

    Args:
        image: HxWx3 uint8.
        hw: the model's input (height, width).
    Returns:
        (the ``hw`` image, the ratio, (left, top) padding in pixels).
    """
    import cv2

    image = np.ascontiguousarray(image)  # OpenCV refuses views with negative strides (an RGB<->BGR flip)
    h0, w0 = image.shape[:2]
    r = min(hw[0] / h0, hw[1] / w0)
    new_w, new_h = int(round(w0 * r)), int(round(h0 * r))
    if (new_w, new_h) != (w0, h0):
        image = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    dw, dh = (hw[1] - new_w) / 2, (hw[0] - new_h) / 2
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    out = cv2.copyMakeBorder(image, top, bottom, left, right, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3)
    return out, r, (left, top)


def unletterbox(boxes: torch.Tensor, ratio: float, pad: Tuple[int, int], image_hw: Tuple[int, int]) -> torch.Tensor:
    """XYXY boxes at the model input back onto the original image (``[N, 4]``), clipped to it."""
    boxes = boxes.clone()
    boxes[:, [0, 2]] -= pad[0]
    boxes[:, [1, 3]] -= pad[1]
    boxes /= ratio
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clamp(0, image_hw[1])
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clamp(0, image_hw[0])
    return boxes


def yolo_candidates(pred: np.ndarray, fmt: str, score_thresh: float) -> Tuple[torch.Tensor, ...]:
    """One image's raw yolo output -> (XYXY boxes at the input size, scores, classes) over the threshold.

    Args:
        pred: ``[4+K, N]`` (yolov8) or ``[N, 5+K]`` (yolov5).
    Returns:
        boxes ``[M, 4]``, scores ``[M]``, classes ``[M]`` (int64), best class per anchor.
    """
    p = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))
    if fmt == "yolov8":
        p = p.T
        scores, classes = p[:, 4:].max(dim=1)
    else:
        p = p[p[:, 4] > score_thresh]
        scores, classes = (p[:, 5:] * p[:, 4:5]).max(dim=1)
    keep = scores > score_thresh
    boxes, scores, classes = box_convert(p[keep, :4], "cxcywh", "xyxy"), scores[keep], classes[keep]
    if len(scores) > MAX_NMS:
        top = scores.topk(MAX_NMS).indices
        boxes, scores, classes = boxes[top], scores[top], classes[top]
    return boxes, scores, classes


class OnnxDetector(FirstStage):
    """An ONNX detector graph on ONNX Runtime (CPU; CUDA when ``device`` is cuda and the provider exists).

    Args:
        path: the ``.onnx`` file.
        device: ``cpu`` or ``cuda[:i]``.
        score_thresh: boxes scoring over this are kept (default 0.25).
        categories: class names in label order when the file has no ``names`` metadata (``--categories``).
        detector_format: ``yolov8`` | ``yolov5`` | ``boxes``; ``None``: read from the graph.
    """

    name = "onnx"

    def __init__(self, path: str, *, device: str = "cpu", score_thresh: Optional[float] = None,
                 categories: Optional[Sequence[str]] = None, detector_format: Optional[str] = None):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            raise UsageError(f"onnx:{self.path}: no such file")
        self.session = _session(self.path, device)
        meta = dict(self.session.get_modelmeta().custom_metadata_map or {})
        names = parse_names(meta.get("names"), self.path)
        fmt = detect_format(self.session, self.path, names or categories, detector_format)
        self.layout = read_layout(self.session, self.path, fmt, meta)
        self.class_names = self._class_names(names, categories)
        self.score_thresh = DEFAULT_SCORE_THRESH if score_thresh is None else float(score_thresh)
        self.iou_thresh = NMS_IOU.get(fmt)

    def _class_names(self, names: Optional[List[str]], categories: Optional[Sequence[str]]) -> List[str]:
        k = self.layout.num_classes
        cats = [str(c) for c in categories] if categories else None
        for what, got in (("its 'names' metadata", names), ("--categories", cats)):
            if got is not None and k is not None and len(got) != k:
                raise UsageError(f"onnx:{self.path}: the {self.layout.format} output has {k} classes but {what} "
                                 f"names {len(got)}")
        if names is not None and cats is not None and len(names) != len(cats):
            raise UsageError(f"onnx:{self.path}: its 'names' metadata names {len(names)} classes but --categories "
                             f"{len(cats)}")
        if names is None and cats is None:
            raise UsageError(f"onnx:{self.path}: the file has no 'names' metadata; pass the class names with "
                             "--categories ANNOTATIONS.json")
        return list(names if names is not None else cats)

    def detect(self, records: Sequence[ImageRecord]) -> List[ImageDetections]:
        """Args:
            records: images, HxWx3 uint8 RGB each (sizes may differ).
        Returns:
            one ``ImageDetections`` per record: XYXY boxes in the record's pixels, labels into ``class_names``.
        """
        step = self.layout.fixed_batch or max(1, len(records))
        out: List[ImageDetections] = []
        for i in range(0, len(records), step):
            out += self._run(records[i:i + step])
        return out

    def _feed(self, records: Sequence[ImageRecord]):
        """(the session's feed, per record (ratio, pad) or None where boxes come in original pixels)."""
        lay = self.layout
        if lay.input_rank == 3:
            return {lay.input_name: _to_input(records[0].image[None], lay.input_dtype)[0]}, [None]
        if lay.size_input is not None:  # RT-DETR: plain resize; the graph maps boxes back itself
            import cv2

            batch = np.stack([cv2.resize(r.image, lay.input_hw[::-1], interpolation=cv2.INTER_LINEAR) for r in records])
            sizes = np.array([[r.image.shape[1], r.image.shape[0]] for r in records], dtype=lay.size_dtype)
            return {lay.input_name: _to_input(batch, lay.input_dtype), lay.size_input: sizes}, [None] * len(records)
        boxed = [letterbox(r.image, lay.input_hw) for r in records]
        batch = np.stack([b[0] for b in boxed])
        if lay.fixed_batch and len(batch) < lay.fixed_batch:  # a fixed batch > 1: pad the last chunk
            batch = np.concatenate([batch, np.zeros((lay.fixed_batch - len(batch),) + batch.shape[1:], batch.dtype)])
        return {lay.input_name: _to_input(batch, lay.input_dtype)}, [(b[1], b[2]) for b in boxed]

    def _run(self, records: Sequence[ImageRecord]) -> List[ImageDetections]:
        feed, maps = self._feed(records)
        outputs = self.session.run(list(self.layout.outputs), feed)
        out = []
        for i, (rec, m) in enumerate(zip(records, maps)):
            if self.layout.format == "boxes":
                boxes, scores, classes = self._boxes_output(outputs, i)
            else:
                boxes, scores, classes = yolo_candidates(outputs[0][i], self.layout.format, self.score_thresh)
                keep = batched_nms(boxes, scores, classes, self.iou_thresh)[:MAX_DET]
                boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
            if m is not None:
                boxes = unletterbox(boxes, m[0], m[1], rec.image.shape[:2])
            out.append(ImageDetections(boxes.numpy(), classes.numpy(), scores.numpy()))
        return out

    def _boxes_output(self, outputs, i: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        boxes, scores, labels = (np.asarray(o) for o in outputs)
        if boxes.ndim == 3:  # [B, N, 4]
            boxes, scores, labels = boxes[i], scores[i], labels[i]
        boxes = torch.from_numpy(boxes.astype(np.float32).reshape(-1, 4))
        scores = torch.from_numpy(scores.astype(np.float32).reshape(-1))
        labels = torch.from_numpy(labels.astype(np.int64).reshape(-1))
        if not len(boxes) == len(scores) == len(labels):
            raise UsageError(f"onnx:{self.path}: {len(boxes)} boxes, {len(scores)} scores and {len(labels)} labels")
        keep = scores > self.score_thresh
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        bad = labels[(labels < 0) | (labels >= len(self.class_names))]
        if len(bad):
            raise UsageError(f"onnx:{self.path}: label {int(bad[0])} is outside the {len(self.class_names)} class "
                             "names (check --categories)")
        return boxes, scores, labels


def _to_input(batch: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``[B, H, W, 3]`` uint8 RGB -> ``[B, 3, H, W]`` of the graph's type (float: scaled to [0, 1])."""
    x = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
    return x if dtype == np.uint8 else (x.astype(np.float32) / 255.0).astype(dtype)


def _providers(ort, device: str) -> list:
    dev = torch.device(device)
    if dev.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]
    if dev.type == "cuda":
        logger.warning("onnx: first stage: this ONNX Runtime has no CUDA provider (install onnxruntime-gpu); "
                       "the detector runs on the CPU")
    return ["CPUExecutionProvider"]


def _session(path: str, device: str):
    ort = import_onnxruntime()
    try:
        return ort.InferenceSession(path, providers=_providers(ort, device))
    except Exception as e:  # ORT raises its own InvalidProtobuf / Fail / InvalidGraph types
        reason = " ".join(str(e).split())[:300]
        raise UsageError(f"onnx:{path}: not an ONNX model ONNX Runtime can load ({type(e).__name__}: {reason})") from e
