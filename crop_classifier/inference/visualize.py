"""Pictures of what the second stage did per box (``draw``: ``utils/drawing.py``, also used for video frames)
and the unique file name of each input's picture in the flat ``vis/`` folder."""
from __future__ import annotations

import os
from typing import Dict, List, Mapping, Sequence

from ..utils.drawing import draw  # noqa: F401  (the pictures themselves: shared with video frames)


# ------------------------------------------------------------------------------------------------ picture names
JPEG_SUFFIXES = (".jpg", ".jpeg")


def vis_names(files: Sequence[str]) -> Dict[str, str]:
    """A unique, stable name stem for every input file's pictures (``vis_file_name`` turns it into a file name).

    The stem is the file's path relative to the deepest folder all inputs share, with path separators and
    ``#`` (which marks video frames) turned into ``_``, extension kept: ``a/x.jpg``, ``a/x.png`` and
    ``b/x.jpg`` give ``a_x.jpg``, ``a_x.png`` and ``b_x.jpg``; inputs from one folder keep their own
    names. Pictures that would still clash (also case-insensitively, for macOS and Windows file systems)
    get ``_2``, ``_3``, ... in input order. Call it once with the whole input list (before sharding), so
    every shard and every resumed run writes the same names.
    """
    files = list(dict.fromkeys(files))
    rel = _relative_paths(files)
    stems: Dict[str, str] = {}
    taken = set()
    for f in files:
        stem = rel[f]
        for sep in {os.sep, os.altsep or os.sep, "/", "#"}:
            stem = stem.replace(sep, "_")
        base, ext = os.path.splitext(stem)
        n = 1
        while _reserved(stem) & taken:
            n += 1
            stem = f"{base}_{n}{ext}"
        taken |= _reserved(stem)
        stems[f] = stem
    return stems


def vis_file_name(stems: Mapping[str, str], file_name: str) -> str:
    """The picture file of a record: ``STEM.jpg`` (``STEM`` alone when it ends in .jpg/.jpeg) for an image,
    ``STEM#FRAME.jpg`` for frame ``FRAME`` of a video (record name ``VIDEO#FRAME``)."""
    if file_name in stems:
        return _image_picture(stems[file_name])
    video, sep, frame = file_name.rpartition("#")
    if sep and video in stems:
        return f"{stems[video]}#{frame}.jpg"
    raise KeyError(f"{file_name!r} is not one of the inputs the picture names were made for")


def _image_picture(stem: str) -> str:
    return stem if stem.lower().endswith(JPEG_SUFFIXES) else stem + ".jpg"


def _reserved(stem: str) -> set:
    # What a stem's pictures occupy, lower-cased: the image picture and every STEM#FRAME.jpg of a video.
    # Stems hold no '#', so an image picture never equals a frame's.
    return {_image_picture(stem).lower(), stem.lower() + "#"}


def _relative_paths(files: Sequence[str]) -> Dict[str, str]:
    absolute = {f: os.path.abspath(f) for f in files}
    try:
        common = os.path.commonpath([os.path.dirname(a) for a in absolute.values()]) if files else ""
    except ValueError:  # paths on different drives (Windows): no common folder
        return {f: os.path.splitdrive(a)[1].lstrip("\\/") for f, a in absolute.items()}
    return {f: os.path.relpath(a, common) for f, a in absolute.items()}
