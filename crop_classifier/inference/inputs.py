"""Inputs of ``tools/infer.py``: image files, folders, globs and videos (frame by frame), with bad files
reported instead of stopping the run."""
from __future__ import annotations

import glob
import os
import warnings
from dataclasses import dataclass
from typing import Iterator, List, Sequence, Tuple

import cv2
import numpy as np

from ..data.images import IMAGE_EXTS, VIDEO_EXTS, read_rgb
from ..errors import ImageReadError
from ..structures import ImageRecord, frame_name

# Files with these extensions are taken from folders and globs without a look inside; any other file there is
# taken when Pillow recognises its header as an image, and reported as a bad input otherwise.

INPUT_HELP = (
    "image files, folders, glob patterns and video files (read frame by frame). A folder is searched "
    "recursively in sorted path order, skipping hidden files and folders (names starting with '.'), as glob "
    "does; quote patterns so the shell leaves them alone ('**' matches any depth). Every file found is "
    "processed or listed as a bad input with the reason (e.g. a file that is not an image or video)"
)


@dataclass
class BadInput:
    path: str
    reason: str


def expand_inputs(paths: Sequence[str]) -> Tuple[List[str], List[BadInput]]:
    """The files to process, in order, and the inputs that cannot be (with the reason); see ``INPUT_HELP``.

    A path given by name is taken as it is (its reader reports it when it is unreadable); the files a
    folder or pattern yields are each either taken or listed as bad, so every input is accounted for.
    File names are the paths as found (``os.path.join(folder, relative path)``), each once.
    """
    files: List[str] = []
    bad: List[BadInput] = []
    for p in paths:
        if os.path.isdir(p):
            found = _walk_folder(p, bad)
            if not found:
                bad.append(BadInput(p, "folder holds no files (hidden ones are skipped)"))
            _take(found, files, bad)
        elif os.path.exists(p):
            files.append(p)
        elif glob.has_magic(p):
            found = sorted((f for f in glob.glob(p, recursive=True) if os.path.isfile(f)), key=_path_key)
            if not found:
                bad.append(BadInput(p, "pattern matches no file"))
            _take(found, files, bad)
        else:
            bad.append(BadInput(p, "no such file or folder"))
    seen, unique = set(), []
    for f in files:
        if f not in seen:
            seen.add(f)
            unique.append(f)
    return unique, bad


def _path_key(path: str) -> List[str]:
    # component-wise, so "a/x.jpg" sorts before "a-b/x.jpg" and a folder's files stay together
    return os.path.normpath(path).split(os.sep)


def _walk_folder(folder: str, bad: List[BadInput]) -> List[str]:
    """Every non-hidden file under ``folder`` (symbolic links followed, each real folder once), sorted."""
    found: List[str] = []
    seen_dirs = set()

    def unreadable(e: OSError) -> None:
        bad.append(BadInput(e.filename or folder, f"cannot list folder ({e.strerror or e})"))

    for root, dirs, names in os.walk(folder, onerror=unreadable, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_dirs:  # a link back up the tree (or to a folder already walked)
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(os.path.join(root, n) for n in names if not n.startswith("."))
    return sorted(found, key=_path_key)


def _take(found: Sequence[str], files: List[str], bad: List[BadInput]) -> None:
    for f in found:
        if f.lower().endswith(IMAGE_EXTS + VIDEO_EXTS) or _image_header(f):
            files.append(f)
        else:
            ext = os.path.splitext(f)[1]
            bad.append(BadInput(f, f"not an image or video file (extension {ext!r} and contents unrecognised)"
                                if ext else "not an image or video file (no extension, contents unrecognised)"))


def _image_header(path: str) -> bool:
    """Whether Pillow recognises the file as an image from its header alone (nothing is decoded)."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. DecompressionBombWarning: the reader's pixel limit decides
            with Image.open(path):
                return True
    except Image.DecompressionBombError:  # an image, too large for Pillow; the reader says so with its limit
        return True
    except Exception:  # any failure to identify: not an image we can read
        return False


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
                        yield ImageRecord(frame_name(path, index), np.ascontiguousarray(frame[:, :, ::-1]),
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
