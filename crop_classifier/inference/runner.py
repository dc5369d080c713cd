"""The loop behind ``tools/infer.py``: inputs -> first stage -> second stage -> results, pictures, summary, eval."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch

from ..detectors import DetectionsFile, GroundTruthBoxes, build_first_stage
from ..coco_io import load_coco
from ..deploy import RuntimeOptions, describe, int8_advice, load_classifier
from ..deploy.routed import weights_paths
from ..errors import CheckpointError, ParameterError, UsageError
from ..second_stage import SecondStage, SecondStageConfig, flag_error
from ..structures import ImageRecord
from ..video import RunOptions, SourceOptions, TrackOptions, run_tracking
from ..utils.io import atomic_save_json, atomic_write_bytes
from .coco_results import assign_category_ids, background_ceiling, coco_box_map, detector_results, fused_results
from .inputs import BadInput, expand_inputs, iter_records
from .visualize import draw, vis_file_name, vis_names
from . import resume as resume_mod
from .sharding import gather_parts, merge_parts, resolve_shard, shard_device, write_part

logger = logging.getLogger(__name__)


@dataclass
class InferOptions:
    """What ``tools/infer.py`` runs: inputs and outputs, the first stage, the classifier file and how it runs,
    and the second stage's knobs (``stage``, a ``SecondStageConfig``). Field names are the flags' dests."""

    input: Sequence[str]
    output: str
    detector: str = "faster_rcnn"
    classifier: Optional[str] = "v3_79"
    classifier_weights: Optional[str] = None
    detector_config: Optional[str] = None
    detector_weights: Optional[str] = None
    detector_opts: Sequence[str] = ()
    detector_format: Optional[str] = None  # an onnx: detector's output layout (default: read from the graph)
    device: Optional[str] = None
    score_thresh: Optional[float] = None
    stage: SecondStageConfig = field(default_factory=SecondStageConfig)
    batch_size: int = 4
    categories: Optional[str] = None
    eval: Optional[str] = None
    vis_limit: int = 50
    vis_score_thresh: float = 0.3
    video_stride: int = 1
    progress: bool = True
    num_shards: int = 0  # > 0: run shard ``shard_id`` of that many (schedulers); 0: torchrun's world, or one
    shard_id: int = 0
    resume: bool = False  # reuse OUTPUT/parts of an earlier run with the same options (see resume.py)
    precision: Optional[str] = None  # the classifier's: fp32 | bf16 | fp16 | int8; None: the loader's choice
    backend: Optional[str] = None  # torch | onnxruntime | openvino; None: deploy.load_classifier's default
    cpu_streams: int = 1  # CPU: a batch of crops split over this many parallel single-thread streams
    route_thresholds: Optional[Sequence[float]] = None  # a routed classifier's thresholds (px); None: recorded ones
    track: Optional[TrackOptions] = None  # video/streams: track objects, classify at their best views, vote
    stream_retries: int = 3

    @classmethod
    def from_namespace(cls, args: Any, **overrides: Any) -> "InferOptions":
        """From ``tools/infer.py``'s parsed flags (dests named as the fields; the second stage's through
        ``SecondStageConfig.from_namespace``)."""
        names = {f.name for f in fields(cls)} - {"stage", "progress", "track"}
        kwargs = {n: getattr(args, n) for n in names if hasattr(args, n)}
        kwargs.update(stage=SecondStageConfig.from_namespace(args), progress=not getattr(args, "no_progress", False))
        kwargs.update(overrides)
        return cls(**kwargs)


@dataclass
class _Tally:
    images: int = 0
    boxes: int = 0
    crops: int = 0
    changed: int = 0
    dropped: int = 0
    t_detect: float = 0.0
    t_second: float = 0.0
    top1_hits: int = 0
    top1_total: int = 0
    det_results: List[dict] = field(default_factory=list)
    results: List[dict] = field(default_factory=list)
    eval_img_ids: List[int] = field(default_factory=list)
    entry_errors: List[str] = field(default_factory=list)  # malformed detection entries found per image
    records: List[tuple] = field(default_factory=list)  # (image id, fixed by an annotation file), input order
    route_crops: Dict[str, int] = field(default_factory=dict)  # routed classifier: crops per input size ("79")
    dropped_by: Dict[str, int] = field(default_factory=dict)  # boxes the second stage removed, by reason
    vis: Dict[str, int] = field(default_factory=dict)  # pictures written, and those left empty by --vis-score-thresh


def _device(name: Optional[str]) -> str:
    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def _encode_jpg(rgb: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _runtime_options(streams: int) -> RuntimeOptions:
    """``streams`` parallel streams sharing torch's thread budget (1: one stream on every thread)."""
    if streams < 1:
        raise UsageError(f"--cpu-streams {streams}: must be >= 1")
    return RuntimeOptions(threads=None if streams == 1 else max(1, torch.get_num_threads() // streams),
                          streams=streams)


# load_classifier's parameters whose flag is not "--" + the name (``flag_error``)
LOADER_FLAGS = {"path": "--classifier-weights", "expected_meta": "--classifier", "streams": "--cpu-streams"}


def build_stages(o: InferOptions, device: str):
    """(first stage, second stage, reference categories or None)."""
    try:
        return _build_stages(o, device)
    except ParameterError as e:  # the library names its parameter; a user of this tool reads the flag
        raise UsageError(flag_error(e, LOADER_FLAGS)) from None


def _build_stages(o: InferOptions, device: str):
    if not o.classifier_weights:
        raise UsageError("--classifier-weights is required: a crop_classifier checkpoint (tools/train.py writes "
                         "OUTPUT_DIR/model_final.pth); inference never runs a randomly initialised classifier")
    missing = [str(p) for p in weights_paths(o.classifier_weights) if not p.is_file()]
    if missing:
        raise UsageError(f"--classifier-weights {', '.join(missing)}: no such file")
    ref_path = o.eval or (o.detector[3:] if o.detector.startswith("gt:") else None) or o.categories
    ref_cats = load_coco(ref_path).categories if ref_path else None
    try:
        first = build_first_stage(
            o.detector, config_file=o.detector_config, weights=o.detector_weights, device=device,
            score_thresh=o.score_thresh, annotations=o.categories or o.eval, opts=o.detector_opts,
            detector_format=o.detector_format,
        )
    except (FileNotFoundError, KeyError) as e:
        raise UsageError(str(e).strip("'\"")) from e
    try:
        # Any file tools/train.py, tools/export.py or tools/quantize.py writes, on the chosen runtime; several
        # files (a comma list) make a routed set (--classifier auto).
        classifier = load_classifier(o.classifier_weights, o.backend, device=device, precision=o.precision,
                                     expected_meta={"arch": o.classifier} if o.classifier else None,
                                     options=_runtime_options(o.cpu_streams), route_thresholds=o.route_thresholds)
        second = SecondStage(classifier, first.class_names, o.stage)
    except CheckpointError as e:
        raise UsageError(f"--classifier-weights: {e}" + (" (use --classifier to name the checkpoint's architecture)"
                                                        if "arch" in str(e) else "")) from e
    return first, second, ref_cats


class InferenceRun:
    """One run of ``tools/infer.py``: ``InferenceRun(options).run() -> summary``, in named steps.

    Sharded (torchrun, or ``num_shards``): this process's part of the inputs; the process that merges
    returns the merged summary, the others ``{"shard": ..., "merged": False}``. Every finished image is
    written to its own part file at once (atomically), so a stopped run can be resumed (``--resume``)
    without redoing finished images; the outputs are then built from the parts."""

    def __init__(self, o: InferOptions):
        if o.batch_size < 1 or o.video_stride < 1:
            raise UsageError("--batch-size and --video-stride must be >= 1")
        try:
            self.shard = resolve_shard(o.num_shards, o.shard_id)
        except ValueError as e:
            raise UsageError(str(e)) from None
        self.o = o
        self.device = _device(shard_device(o.device, self.shard))
        self.first, self.second, ref_cats = build_stages(o, self.device)
        self.out_dir = Path(o.output)
        self.out_ids = assign_category_ids(self.second.output_class_names, ref_cats)
        self.det_ids = assign_category_ids(self.first.class_names, ref_cats)
        self._load_ground_truth()
        self.files, self.bad = expand_inputs(o.input)
        self.vis_names = vis_names(self.files)  # from every input, so shards and resumes name pictures alike
        if self.shard.count > 1:  # a contiguous part; missing paths are reported once, by shard 0
            self.files, self.bad = self.shard.take(self.files), (self.bad if self.shard.index == 0 else [])
        self.parts_dir = resume_mod.parts_dir(self.out_dir, self.shard.index, self.shard.count)
        self.order: List[str] = []  # record names in input order (finished earlier or now)
        self.parts: Dict[str, dict] = {}
        self.resumed = 0  # images taken from the parts of an earlier run
        self.processed = 0  # images processed by this run

    # ------------------------------------------------------------------ set-up steps
    def _load_ground_truth(self) -> None:
        """Evaluation data (``--eval``) and the image ids annotation/detections files fix."""
        o = self.o
        self.gt = self.gt_boxes = None
        gt_images: Dict[str, dict] = {}
        first = self.first
        if o.eval:  # one parse of the file serves COCOeval, image ids and the crop top-1 boxes
            ev = load_coco(o.eval)
            self.gt, gt_images = ev.coco, ev.images_by_key
            self.gt_boxes = first if isinstance(first, GroundTruthBoxes) and first.coco is ev else GroundTruthBoxes(ev)
        elif isinstance(first, GroundTruthBoxes):
            gt_images = first.images
        elif o.categories:
            gt_images = load_coco(o.categories).images_by_key
        self.known_ids = {k: int(i["id"]) for k, i in gt_images.items()}
        for k, i in getattr(self.first, "image_ids", {}).items():  # a detections file's own image ids
            self.known_ids.setdefault(k, i)
        self.first_new_id = max(self.known_ids.values(), default=0) + 1
        self.next_id = self.first_new_id

    def _prepare_parts(self) -> Dict[str, dict]:
        try:
            done = resume_mod.prepare(self.parts_dir, resume_mod.fingerprint(self.o), resume=self.o.resume)
        except ValueError as e:
            raise UsageError(str(e)) from None
        self.parts.update(done)
        return done

    # ------------------------------------------------------------------ the loop
    def _records(self, done: Dict[str, dict]):
        """Input records in order; a name (str) for an image finished in an earlier run (not decoded again)."""
        def pending():
            for path in self.files:
                if path in done:
                    yield path
                else:
                    yield from iter_records([path], self.bad, video_stride=self.o.video_stride)

        from tqdm import tqdm

        return tqdm(pending(), total=len(self.files), desc="infer", unit="img", disable=not self.o.progress)

    def _admit(self, r: ImageRecord) -> bool:
        """Gives ``r`` its image id; False when the ground-truth first stage does not know the image."""
        if isinstance(self.first, GroundTruthBoxes) and r.key not in self.first.images:
            self.bad.append(BadInput(r.file_name, f"not an image of {self.first.path} (gt: first stage)"))
            return False
        if r.key in self.known_ids:
            r.image_id = self.known_ids[r.key]
        else:
            r.image_id, self.next_id = self.next_id, self.next_id + 1
        r.extra["known_id"] = r.key in self.known_ids
        return True

    def _flush(self, batch: List[ImageRecord]) -> None:
        if not batch:
            return
        n_before = len(self.order) - len(batch)
        for part in process_batch(self, batch, n_before):
            resume_mod.write_image_part(self.parts_dir, part)
            self.parts[part["file_name"]] = part
        self.processed += len(batch)
        batch.clear()

    def _loop(self) -> float:
        """Every input through both stages; returns the wall time of this run's own work."""
        done = self._prepare_parts()
        t_start = time.perf_counter()
        batch: List[ImageRecord] = []
        for r in self._records(done):
            if isinstance(r, str) or r.file_name in done:  # finished in an earlier run (video frames: per frame)
                self.order.append(r if isinstance(r, str) else r.file_name)
                self.resumed += 1
                continue
            if not self._admit(r):
                continue
            self.order.append(r.file_name)
            batch.append(r)
            if len(batch) == self.o.batch_size:
                self._flush(batch)
        self._flush(batch)
        return time.perf_counter() - t_start

    # ------------------------------------------------------------------ results
    def _tally(self) -> _Tally:
        """This process's parts merged in input order; ids no annotation file fixes numbered in that order,
        as an uninterrupted run numbers them."""
        merged, _, _ = merge_parts([self.parts[k] for k in self.order], self.first_new_id)
        tally = _Tally(**merged)
        new_id = iter(range(self.first_new_id, self.first_new_id + len(self.order)))
        tally.records = [(i if known else next(new_id), known) for k in self.order for i, known in self.parts[k]["records"]]
        return tally

    def _merge_shards(self, tally: _Tally, wall: float):
        """(tally, bad inputs, wall) of every shard once all are written, else None (another process merges)."""
        bad_dicts = [{"path": b.path, "reason": b.reason} for b in self.bad]
        write_part(self.shard, self.out_dir, vars(tally), bad_dicts, wall, tally.records)
        parts_all = gather_parts(self.shard, self.out_dir)
        if parts_all is None:
            return None
        merged, bad_dicts, wall = merge_parts(parts_all, self.first_new_id)
        return _Tally(**merged), [BadInput(b["path"], b["reason"]) for b in bad_dicts], wall

    def run(self) -> Dict[str, Any]:
        """Runs inference; returns the summary (``bad_inputs`` or ``bad_entries`` non-empty -> the CLI exits 1)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        wall = self._loop()
        tally, bad, extra = self._tally(), self.bad, {}
        if self.shard.count > 1:
            merged = self._merge_shards(tally, wall)
            if merged is None:
                return {"shard": self.shard.index, "num_shards": self.shard.count, "merged": False,
                        "images": tally.images}
            tally, bad, wall = merged
            extra["num_shards"] = self.shard.count
        else:
            extra.update(images_resumed=self.resumed, images_processed=self.processed,
                         images_per_s=round(self.processed / wall, 3) if wall > 0 and self.processed else None)
        return write_outputs(self, tally, bad, wall, extra, self._bad_entries(tally) + self._unmatched())

    def _unmatched(self) -> List[str]:
        """A detections file none of whose entries names an input: one line naming it (the run exits 1)."""
        first = self.first
        if not isinstance(first, DetectionsFile) or not self.order or not first.by_key:
            return []
        keys = {os.path.basename(n) for n in self.order}
        if keys & set(first.by_key):
            return []
        return [f"{first.path}: no entry names any input (entries name e.g. {sorted(first.by_key)[:3]}, the inputs "
                f"are e.g. {sorted(keys)[:3]}; a video frame is named clip.mp4#000012, an image by its file name)"]

    def _bad_entries(self, tally: _Tally) -> List[str]:
        """Malformed entries of the detections/annotation files, each once: those found when the files were
        read, then those found per image (kept in the parts, so resumed and sharded runs report them too)."""
        per_image = {e for errs in getattr(self.first, "errors_by_key", {}).values() for e in errs}
        at_load = [e for e in getattr(self.first, "errors", []) if e not in per_image]
        files = [e for p in (self.o.eval, self.o.categories) if p for e in load_coco(p).errors]
        return list(dict.fromkeys([*at_load, *files, *tally.entry_errors]))

    def saved_images(self) -> int:
        """Images whose results are saved in the parts folder (what ``--resume`` will not redo)."""
        return len(self.parts)


def run(o: InferOptions) -> Dict[str, Any]:
    """``InferenceRun(o).run()``: see ``InferenceRun``; with ``o.track``, ``run_tracked(o)``."""
    return run_tracked(o) if o.track is not None else InferenceRun(o).run()


def run_tracked(o: InferOptions) -> Dict[str, Any]:
    """``--track``: every input (video file, image folder in frame order, camera index, stream URL) through
    ``video.run_tracking``: per-frame results with track ids, ``tracks.json``, annotated videos."""
    if o.resume or o.num_shards > 1 or o.eval:
        raise UsageError("--track: --resume, --num-shards and --eval are for image inputs")
    if o.video_stride < 1 or o.stream_retries < 0:
        raise UsageError("--video-stride must be >= 1 and --stream-retries >= 0")
    device = _device(o.device)
    first, second, ref_cats = build_stages(o, device)
    options = RunOptions(
        track=o.track, source=SourceOptions(retries=o.stream_retries, stride=o.video_stride),
        vis=o.vis_limit != 0, vis_score_thresh=o.vis_score_thresh, progress=o.progress,
        category_ids=assign_category_ids(second.output_class_names, ref_cats))
    return run_tracking(list(o.input), first, second, options, o.output)


def write_outputs(run_: InferenceRun, tally: _Tally, bad: List[BadInput], wall: float, extra: Dict[str, Any],
                  bad_entries: Sequence[str]) -> Dict[str, Any]:
    o, out_dir, second = run_.o, run_.out_dir, run_.second
    atomic_save_json(out_dir / "predictions.json", tally.results)
    atomic_save_json(out_dir / "detector_predictions.json", tally.det_results)
    summary: Dict[str, Any] = {
        "detector": o.detector, "classifier": o.classifier, "classifier_weights": str(o.classifier_weights),
        "classifier_runtime": describe(second.classifier),
        "classifier_form": getattr(second.classifier, "form", None),  # which form ran and why (deploy.forms)
        "classifier_advice": int8_advice(second.classifier),  # a faster form for this CPU, when there is one
        "fusion": second.fusion, "class_map": second.class_map.describe(), "second_stage": o.stage.flags(),
        "device": run_.device,
        "images": tally.images, "boxes": tally.boxes, "crops": tally.crops, "boxes_changed": tally.changed,
        "boxes_dropped": tally.dropped, "boxes_dropped_by": dict(tally.dropped_by), "seconds": round(wall, 3),
        "images_per_s": round(tally.images / wall, 3) if wall > 0 else None,
        "crops_per_s": round(tally.crops / tally.t_second, 2) if tally.t_second > 0 else None,
        "detector_seconds": round(tally.t_detect, 3), "second_stage_seconds": round(tally.t_second, 3),
        "categories": [{"id": run_.out_ids[n], "name": n} for n in second.output_class_names],
        "detector_categories": [{"id": run_.det_ids[n], "name": n} for n in run_.first.class_names],
        "bad_inputs": [{"path": b.path, "reason": b.reason} for b in bad],
        # malformed entries of the detections / annotation files, skipped (the rest was used)
        "bad_entries": list(bad_entries or []),
        "vis_empty": int(tally.vis.get("empty", 0)), "vis_score_thresh": o.vis_score_thresh,
        **extra,
    }
    routes = getattr(second.classifier, "routes", None)
    if routes is not None:  # a routed classifier: its routes and how many crops each took
        summary["routes"] = {**routes.to_meta(), "crops": {
            a: int(tally.route_crops.get(str(s), 0)) for a, s in zip(routes.archs, routes.input_sizes)}}
    if run_.gt is not None:
        summary["eval"] = evaluate(run_.gt, tally, o.eval)
        atomic_save_json(out_dir / "eval.json", summary["eval"])
    atomic_save_json(out_dir / "summary.json", summary)
    return summary


def _route_crops(second: SecondStage, r: ImageRecord, d) -> Dict[str, int]:
    """A routed classifier's crops of this image per input size (``{"79": n, ...}``); {} otherwise."""
    if second.routes is None or not len(d):
        return {}
    boxes = torch.from_numpy(d.boxes).float()
    sent = second.eligible(boxes, torch.from_numpy(d.classes).long(), r.image.shape[:2])
    sizes, counts = np.unique(second.crop_sizes(boxes[sent]).numpy(), return_counts=True)
    return {str(int(s)): int(n) for s, n in zip(sizes, counts)}


def _image_part(r: ImageRecord, d, f, n_crops: int, changed: np.ndarray, run_: InferenceRun,
                times: Dict[str, float], top1: Dict[str, tuple]) -> dict:
    """One image's share of the tally (the format of resume/shard parts)."""
    out_names, det_names = run_.second.output_class_names, run_.first.class_names
    hits, total = top1.get(r.file_name, (0, 0))
    return {
        "file_name": r.file_name, "records": [[r.image_id, bool(r.extra.get("known_id", False))]],
        "images": 1, "boxes": len(d), "crops": int(n_crops), "changed": int(changed.sum()),
        "dropped": len(d) - len(f), "dropped_by": dict(f.dropped), "t_detect": times["detect"], "t_second": times["second"],
        "top1_hits": hits, "top1_total": total,
        "det_results": detector_results(r.image_id, r.file_name, d, det_names, run_.det_ids),
        "results": fused_results(r.image_id, r.file_name, f, out_names, run_.out_ids, det_names, run_.det_ids, changed),
        "eval_img_ids": [r.image_id] if r.file_name in top1 else [], "bad": [], "wall": 0.0,
        "entry_errors": list(getattr(run_.first, "errors_by_key", {}).get(r.key, [])),
        "route_crops": _route_crops(run_.second, r, d),
    }


def process_batch(run_: InferenceRun, records: List[ImageRecord], n_before: int) -> List[dict]:
    """One batch through both stages: a part per record. ``n_before``: images before it (for --vis-limit)."""
    first, second, o = run_.first, run_.second, run_.o
    t0 = time.perf_counter()
    dets = first.detect(records)
    t1 = time.perf_counter()
    out = second.run([torch.from_numpy(r.image).permute(2, 0, 1) for r in records],
                     [torch.from_numpy(d.boxes) for d in dets], [torch.from_numpy(d.classes) for d in dets],
                     [torch.from_numpy(d.scores) for d in dets])
    t2 = time.perf_counter()
    times = {"detect": (t1 - t0) / len(records), "second": (t2 - t1) / len(records)}
    top1 = _crop_top1(records, second, run_.gt_boxes) if run_.gt_boxes is not None else {}
    parts = []
    for j, (r, d, f, n_crops) in enumerate(zip(records, dets, out.detections, out.num_crops)):
        f = f.to("cpu")
        changed = second.changed(f).numpy()
        parts.append(_image_part(r, d, f, n_crops, changed, run_, times, top1))
        if n_before + j < o.vis_limit:
            pic, n_drawn = draw(r.image, d, f, second.output_class_names, first.class_names, o.vis_score_thresh)
            atomic_write_bytes(run_.out_dir / "vis" / vis_file_name(run_.vis_names, r.file_name), _encode_jpg(pic))
            # pictures the threshold left without a result the stage kept
            parts[-1]["vis"] = {"pictures": 1, "empty": int(len(f) > 0 and n_drawn == 0)}
    return parts


def _crop_top1(records, second: SecondStage, gt_boxes: GroundTruthBoxes) -> Dict[str, tuple]:
    """Classifier top-1 on the ground-truth boxes of the evaluated images whose class the classifier knows:
    ``{file_name: (hits, boxes)}`` for every evaluated record."""
    cls_index = {n: i for i, n in enumerate(second.classifier_classes)}
    names_, images, boxes, labels = [], [], [], []
    for r in records:
        if r.key not in gt_boxes.images or "#" in r.file_name:
            continue
        d = gt_boxes.detect([r])[0]
        names = [gt_boxes.class_names[c] for c in d.classes]
        keep = [i for i, n in enumerate(names) if n in cls_index]
        names_.append(r.file_name)
        images.append(torch.from_numpy(r.image).permute(2, 0, 1))
        boxes.append(torch.from_numpy(d.boxes[keep]))
        labels.append(torch.tensor([cls_index[names[i]] for i in keep], dtype=torch.long))
    if not images:
        return {}
    return {n: (int((p.argmax(1).cpu() == y).sum()), len(y))
            for n, p, y in zip(names_, second.classify(images, boxes), labels)}


def evaluate(gt, tally: _Tally, ann_path: str) -> Dict[str, Any]:
    ids = set(tally.eval_img_ids)
    img_ids = sorted(ids)
    two_stage = [r for r in tally.results if r["image_id"] in ids]
    res = {
        "annotations": ann_path,
        "detector_only": coco_box_map(gt, [r for r in tally.det_results if r["image_id"] in ids], img_ids),
        "two_stage": coco_box_map(gt, two_stage, img_ids),
        # The two-stage AP with every box on no object removed: what a perfect background class could add.
        "background_ceiling": background_ceiling(gt, two_stage, img_ids) if two_stage else None,
        "crop_top1": round(tally.top1_hits / tally.top1_total, 5) if tally.top1_total else None,
        "crop_top1_boxes": tally.top1_total,
        "categories_missing": _missing_categories(gt, tally.det_results + two_stage),
    }
    return res


def _missing_categories(gt, results: Sequence[dict]) -> Dict[str, int]:
    """``{category name: detections}`` of results whose category the annotations lack (not evaluated)."""
    known = set(gt.getCatIds())
    out: Dict[str, int] = {}
    for r in results:
        if r["category_id"] not in known:
            name = str(r.get("category_name", r["category_id"]))
            out[name] = out.get(name, 0) + 1
    return out


def _match_lines(ev: Dict[str, Any]) -> List[str]:
    det, two = ev["detector_only"].get("matches"), ev["two_stage"].get("matches")
    if not det or not two:
        return []
    lines = [f"  at score >= {det['score']:g} (IoU 0.5): detector {det['tp']} true / {det['fp']} false positives, "
             f"two-stage {two['tp']} / {two['fp']}: {det['fp'] - two['fp']} false positives removed, "
             f"{det['tp'] - two['tp']} true positives lost (net)"]
    ceil = ev.get("background_ceiling")
    if ceil:
        lines.append(f"  a perfect background class (every box on no object removed: {ceil['removed']}) would reach "
                     f"AP {ceil['AP']:.4f} ({ceil['AP'] - ev['two_stage']['AP']:+.4f})")
    return lines


def route_line(crops: Mapping[str, int], thresholds: Sequence[float] = ()) -> str:
    """A routed classifier's crops per route, as the image and video summaries print them."""
    line = "routed: " + ", ".join(f"{a} {n} crops" for a, n in crops.items())
    return line + (f" (thresholds {', '.join(f'{t:g}' for t in thresholds)} px)" if thresholds else "")


def _reasons(by: Optional[Mapping[str, int]]) -> str:
    return f" ({', '.join(f'{k} {n}' for k, n in sorted(by.items()))})" if by else ""


def format_summary(s: Dict[str, Any]) -> str:
    lines = [
        f"images: {s['images']}  boxes: {s['boxes']}  crops classified: {s['crops']}  "
        f"boxes changed: {s['boxes_changed']}  dropped: {s['boxes_dropped']}{_reasons(s.get('boxes_dropped_by'))}",
        f"speed: {s['images_per_s']} images/s, {s['crops_per_s']} crops/s (second stage) on {s['device']}; "
        f"classifier {s.get('classifier_runtime')}",
    ]
    if s.get("classifier_advice"):
        lines.append(f"note: {s['classifier_advice']}")
    if s.get("routes"):
        lines.append(route_line(s["routes"]["crops"], s["routes"]["thresholds"]))
    if s.get("images_resumed"):
        lines.insert(1, f"resumed: {s['images_resumed']} image(s) taken from an earlier run's parts, "
                        f"{s['images_processed']} processed now (the speed counts these only)")
    ev = s.get("eval")
    if ev:
        lines.append(f"COCO box mAP on {ev['two_stage']['images']} images ({ev['annotations']}):")
        lines.append(f"  {'':16}" + "".join(f"{k:>8}" for k in ("AP", "AP50", "AP75")))
        for key, label in (("detector_only", "detector only"), ("two_stage", "two-stage")):
            lines.append(f"  {label:16}" + "".join(f"{ev[key][k]:8.4f}" for k in ("AP", "AP50", "AP75")))
        lines += _match_lines(ev)
        missing = ev.get("categories_missing")
        if missing:
            lines.append(f"  {sum(missing.values())} detections of {len(missing)} categories the annotations lack were "
                         f"not evaluated: {', '.join(sorted(missing)[:10])}{' ...' if len(missing) > 10 else ''}")
        if ev["crop_top1"] is not None:
            lines.append(f"  crop top-1 on {ev['crop_top1_boxes']} ground-truth boxes: {ev['crop_top1']:.4f}")
    if s.get("vis_empty"):
        lines.append(f"{s['vis_empty']} picture(s) empty at --vis-score-thresh {s['vis_score_thresh']:g}: the "
                     "second stage kept boxes there, all scored below it")
    if s.get("bad_entries"):
        lines.append(f"{len(s['bad_entries'])} malformed detection/annotation entr"
                     f"{'y was' if len(s['bad_entries']) == 1 else 'ies were'} skipped:")
        lines += [f"  {e}" for e in s["bad_entries"]]
    if s["bad_inputs"]:
        lines.append(f"{len(s['bad_inputs'])} input(s) could not be processed:")
        lines += [f"  {b['path']}: {b['reason']}" for b in s["bad_inputs"]]
    return "\n".join(lines)
