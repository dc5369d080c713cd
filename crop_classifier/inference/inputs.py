"""Inputs of ``tools/infer.py``: image files, folders, globs and videos (frame by frame), with bad files
reported instead of stopping the run."""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple, Union

import cv2
import numpy as np

from ..data.images import ImageReadError, read_rgb
from ..detectors.base import ImageRecord

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")


@dataclass
class BadInput:
    path: str
    reason: str


def expand_inputs(paths: Sequence[str]) -> Tuple[List[str], List[BadInput]]:
    """Files in order: a folder gives its images and videos (sorted, not recursive), a glob its matches."""
    files: List[str] = []
    bad: List[BadInput] = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p) if f.lower().endswith(IMAGE_EXTS + VIDEO_EXTS))
            if not found:
                bad.append(BadInput(p, "folder holds no image or video files"))
            files.extend(found)
        elif os.path.exists(p):
            files.append(p)
        elif glob.has_magic(p):
            found = sorted(f for f in glob.glob(p) if os.path.isfile(f))
            if not found:
                bad.append(BadInput(p, "pattern matches no file"))
            files.extend(found)
        else:
            bad.append(BadInput(p, "no such file or folder"))
    seen, unique = set(), []
    for f in files:
        if f not in seen:
            seen.add(f)
            unique.append(f)
    return unique, bad


def read_image_rgb(path: str) -> np.ndarray:
    """HxWx3 uint8 RGB (``crop_classifier.data.images.read_rgb``, the one reader: EXIF orientation, 16-bit,
    alpha, pixel limit); raises ``ImageReadError`` (an OSError) naming the file and the reason."""
    return read_rgb(path)


def iter_records(files: Sequence[str], bad: List[BadInput], *, video_stride: int = 1) -> Iterator[ImageRecord]:
    """Records of every readable image and video frame; unreadable files are appended to ``bad``."""
    for path in files:
        if path.lower().endswith(VIDEO_EXTS):
            cap = cv2.VideoCapture(path)
            if not cap.isOpened():
                bad.append(BadInput(path, "cannot open video"))
                continue
            index = 0
            got_any = False
            try:
                while True:
                    ok, frame = cap.read()
                    if not ok:
                        break
                    got_any = True
                    if index % video_stride == 0:
                        yield ImageRecord(f"{path}#{index:06d}", np.ascontiguousarray(frame[:, :, ::-1]),
                                          extra={"video": path, "frame": index})
                    index += 1
            finally:
                cap.release()
            if not got_any:
                bad.append(BadInput(path, "video has no readable frame"))
            continue
        try:
            image = read_image_rgb(path)
        except ImageReadError as e:
            bad.append(BadInput(path, e.reason))
            continue
        except (OSError, ValueError) as e:
            bad.append(BadInput(path, str(e)))
            continue
        yield ImageRecord(path, image)


def batched(items: Iterator, size: int) -> Iterator[list]:
    batch: list = []
    for x in items:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
