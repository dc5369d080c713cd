"""Frame sources for tracking: video files, image sequences, cameras and streams, one frame iterator.

``open_source(spec)`` takes a video file, a folder of images (frame order = sorted file names), a camera
index (``"0"``) or a stream URL (``rtsp://``, ``http(s)://``, ...) and yields ``Frame(index, image, timestamp)``
with ``image`` an HxWx3 uint8 RGB array. What can go wrong is counted in ``source.stats`` rather than raised:

* a read that fails on a live source (camera, stream) is a stall: the capture is reopened up to
  ``retries`` times, ``retry_wait_s`` apart; when that fails the source ends and ``stats.ended`` says why.
  A file that stops returning frames before its announced frame count is treated the same way (a
  truncated file), but a file at its last frame simply ends;
* a corrupt frame (decoded but empty / wrong shape, or an image file that cannot be read) is skipped and
  counted in ``stats.corrupt``; frame indices keep counting, so outputs line up with the source.

The capture is made by ``capture_factory(target) -> cv2.VideoCapture-like`` (``isOpened``, ``read``,
``get``, ``release``), so tests inject a fake one.
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, List, Optional, Union

import cv2
import numpy as np

from ..data.images import IMAGE_EXTS, read_rgb
from ..errors import UsageError

__all__ = ["Frame", "SourceOptions", "SourceStats", "FrameSource", "open_source", "source_name", "is_stream"]

_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.I)


@dataclass
class Frame:
    index: int  # position in the source (skipped corrupt frames keep their index)
    image: np.ndarray  # HxWx3 uint8 RGB
    timestamp: float  # seconds: the container's position for files, index / fps for sequences, wall clock for live
    path: Optional[str] = None  # the image file of a folder sequence's frame (its name matches detections files)


@dataclass(frozen=True)
class SourceOptions:
    retries: int = 3  # reopen attempts of a stalled live source (or truncated file) before giving up
    retry_wait_s: float = 1.0
    max_corrupt_in_a_row: int = 50  # a source that returns only garbage ends instead of spinning
    sequence_fps: float = 25.0  # timestamps of image sequences
    stride: int = 1  # keep every stride-th frame


@dataclass
class SourceStats:
    frames: int = 0  # frames yielded
    corrupt: int = 0  # frames skipped as unreadable
    retries: int = 0  # reopen attempts
    ended: str = ""  # why the source stopped: "end", "stalled: ...", "corrupt: ..."
    errors: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"frames": self.frames, "corrupt": self.corrupt, "retries": self.retries, "ended": self.ended,
                "errors": self.errors[:20]}


def is_stream(spec: str) -> bool:
    return bool(_URL.match(spec)) or spec.isdigit()


def source_name(spec: str) -> str:
    """A file-name-safe name for outputs (``vis/NAME.mp4``)."""
    if spec.isdigit():
        return f"camera{spec}"
    base = os.path.basename(spec.rstrip("/")) if not _URL.match(spec) else spec.split("://", 1)[1]
    base = os.path.splitext(base)[0] if os.path.isfile(spec) else base
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("_") or "stream"


def _valid(frame: Any) -> bool:
    return isinstance(frame, np.ndarray) and frame.ndim == 3 and frame.shape[2] == 3 and frame.size > 0 \
        and frame.dtype == np.uint8


class FrameSource:
    """Iterate for ``Frame`` s; ``stats`` tells what was skipped and why it ended (see module doc)."""

    def __init__(self, spec: str, options: SourceOptions = SourceOptions(),
                 capture_factory: Optional[Callable[[Any], Any]] = None, sleep: Callable[[float], None] = time.sleep):
        if options.stride < 1 or options.retries < 0:
            raise UsageError(f"source options: stride must be >= 1 and retries >= 0, got {options}")
        self.spec = str(spec)
        self.name = source_name(self.spec)
        self.options = options
        self.stats = SourceStats()
        self.capture_factory = capture_factory or cv2.VideoCapture
        self.sleep = sleep
        self.live = is_stream(self.spec)
        self.fps: float = options.sequence_fps
        self.frame_count: Optional[int] = None  # known for files and sequences once iteration starts
        if os.path.isdir(self.spec):
            self.files = sorted(os.path.join(self.spec, f) for f in os.listdir(self.spec)
                                if f.lower().endswith(IMAGE_EXTS))
            if not self.files:
                raise UsageError(f"--input {self.spec}: folder holds no image files for an image sequence")
            self.frame_count = len(self.files)
        elif not self.live and not os.path.exists(self.spec):
            raise UsageError(f"--input {self.spec}: no such file, folder, camera index or stream URL")
        else:
            self.files = None

    def __iter__(self) -> Iterator[Frame]:
        frames = self._sequence() if self.files is not None else self._capture()
        for frame in frames:
            if frame.index % self.options.stride == 0:
                self.stats.frames += 1
                yield frame

    # ------------------------------------------------------------------ image sequences
    def _sequence(self) -> Iterator[Frame]:

        bad_run = 0
        for i, path in enumerate(self.files):
            try:
                image = read_rgb(path)
            except (OSError, ValueError) as e:
                self._corrupt(f"{path}: {e}")
                bad_run += 1
                if bad_run >= self.options.max_corrupt_in_a_row:
                    self.stats.ended = f"corrupt: {bad_run} unreadable images in a row"
                    return
                continue
            bad_run = 0
            yield Frame(i, image, i / self.fps, path)
        self.stats.ended = "end"

    # ------------------------------------------------------------------ OpenCV captures
    def _open(self):
        target: Union[int, str] = int(self.spec) if self.spec.isdigit() else self.spec
        cap = self.capture_factory(target)
        if not cap.isOpened():
            cap.release()
            return None
        return cap

    def _capture(self) -> Iterator[Frame]:
        cap = self._open()
        if cap is None:
            raise UsageError(f"--input {self.spec}: OpenCV cannot open it (not a video, camera or reachable stream)")
        fps = float(cap.get(cv2.CAP_PROP_FPS) or 0)
        self.fps = fps if 0 < fps < 1000 else self.options.sequence_fps
        announced = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if not self.live else 0
        self.frame_count = announced if announced > 0 else None
        index, bad_run, fails, t0 = 0, 0, 0, time.monotonic()
        try:
            while True:
                ok, frame = cap.read() if cap is not None else (False, None)
                if not ok:
                    # A file's frame count is an estimate for many containers (variable frame rate): a read that
                    # fails within 2 % (2 frames at least) of it is the end, not a truncation.
                    if cap is not None and not self.live and (announced <= 0 or index >= announced - max(2, announced // 50)):
                        self.stats.ended = "end"
                        return
                    # A stall (or a truncated file): reopen, up to ``retries`` times without a good frame between.
                    fails += 1
                    if fails > self.options.retries:
                        what = "stream stalled" if self.live else f"file stopped at frame {index} of {announced}"
                        self.stats.ended = f"stalled: {what}; {self.options.retries} reopen attempt(s) failed"
                        self.stats.errors.append(self.stats.ended)
                        return
                    cap = self._reopen(cap, index)
                    continue
                fails = 0
                if not _valid(frame):
                    self._corrupt(f"frame {index}: not an HxWx3 uint8 image")
                    index += 1
                    bad_run += 1
                    if bad_run >= self.options.max_corrupt_in_a_row:
                        self.stats.ended = f"corrupt: {bad_run} unreadable frames in a row"
                        return
                    continue
                bad_run = 0
                if self.live:
                    ts = time.monotonic() - t0
                else:
                    pos = cap.get(cv2.CAP_PROP_POS_MSEC)
                    ts = float(pos) / 1000 if pos and pos > 0 else index / self.fps
                yield Frame(index, np.ascontiguousarray(frame[:, :, ::-1]), ts)
                index += 1
        finally:
            if cap is not None:
                cap.release()

    def _reopen(self, cap, index: int):
        """Releases ``cap``, waits, opens the source again (a file: seeks back to ``index``); None if it fails."""
        if cap is not None:
            cap.release()
        self.stats.retries += 1
        self.sleep(self.options.retry_wait_s)
        new = self._open()
        if new is not None and not self.live:
            new.set(cv2.CAP_PROP_POS_FRAMES, index)
        return new

    def _corrupt(self, why: str) -> None:
        self.stats.corrupt += 1
        self.stats.errors.append(why)


def open_source(spec: str, options: SourceOptions = SourceOptions(), **kwargs: Any) -> FrameSource:
    return FrameSource(spec, options, **kwargs)
