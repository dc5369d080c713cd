"""The one image reader: any image file -> ``HxWx3`` uint8 RGB, or an ``ImageReadError`` that says why.

``read_rgb(path)`` handles what real folders hold:

* grayscale, gray+alpha, palette, RGBA (alpha dropped), 16-bit PNG/TIFF (scaled to 8 bit), CMYK JPEG,
  1x1 images: all become 3-channel 8-bit RGB;
* EXIF orientation is applied (the array is what a viewer shows; boxes refer to that);
* zero-byte files, non-images with image extensions, truncated JPEGs/PNGs, folders, missing or
  unreadable paths: ``ImageReadError`` naming the file and the reason (a missing file is also a
  ``FileNotFoundError``);
* a pixel limit, checked from the header before anything is decoded: images with more than
  ``max_pixels`` pixels (default ``MAX_PIXELS``, 2**27 ~ 134 megapixels, e.g. 12000x9000 passes;
  environment variable ``CROP_CLASSIFIER_MAX_PIXELS`` overrides it) are refused, so a
  decompression bomb cannot exhaust memory. Peak memory of one read is about the file size plus
  6 bytes per pixel (OpenCV decodes into its own buffer and hands NumPy a copy; the result is 3).

OpenCV decodes (3 bytes/pixel straight into the result, libjpeg-turbo); Pillow reads only the header
(size, format) and decodes the formats OpenCV lacks (e.g. GIF). OpenCV silently returns a grey-filled
picture for a truncated JPEG, so JPEGs are also checked for their end-of-image marker.
"""
from __future__ import annotations

import io
import os
import re
import warnings
from typing import Optional, Tuple, Union

import cv2
import numpy as np

from ..errors import ImageNotFoundError, ImageReadError

__all__ = ["IMAGE_EXTS", "VIDEO_EXTS", "MAX_PIXELS", "read_rgb", "max_pixels_default"]

PathLike = Union[str, os.PathLike]

# File extensions the readers take (OpenCV/Pillow images; OpenCV videos).
IMAGE_EXTS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".dib", ".tif", ".tiff", ".webp", ".gif",
              ".jp2", ".pbm", ".pgm", ".ppm", ".pnm", ".pfm", ".sr", ".ras", ".exr", ".hdr", ".pic")
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")

MAX_PIXELS = 2 ** 27
_ENV_MAX_PIXELS = "CROP_CLASSIFIER_MAX_PIXELS"


def max_pixels_default() -> int:
    """``CROP_CLASSIFIER_MAX_PIXELS`` when set (0 or negative: no limit), else ``MAX_PIXELS``."""
    env = os.environ.get(_ENV_MAX_PIXELS, "").strip()
    if not env:
        return MAX_PIXELS
    try:
        return int(float(env))
    except ValueError:
        raise ValueError(f"environment variable {_ENV_MAX_PIXELS}={env!r}: expected a number of pixels") from None


def _read_bytes(path: PathLike) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise ImageNotFoundError(path, "no such file") from None
    except IsADirectoryError:
        raise ImageReadError(path, "is a folder, not an image file") from None
    except PermissionError:
        raise ImageReadError(path, "permission denied") from None
    except OSError as e:
        raise ImageReadError(path, f"cannot read the file ({e.strerror or e})") from None


def _header(data: bytes) -> Tuple[Optional[str], Optional[Tuple[int, int]], int]:
    """(format, (width, height), pixels) from Pillow's lazy open, which reads only the header.

    ``(None, None, -1)`` when Pillow does not recognise the header. Beyond Pillow's own hard limit
    (~179 MP) it refuses to open; the pixel count then comes from its message (size unknown).
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                return im.format, tuple(im.size), im.size[0] * im.size[1]
    except Image.DecompressionBombError as e:
        m = re.search(r"\((\d+) pixels\)", str(e))
        return "?", None, int(m.group(1)) if m else -1
    except Exception:  # unidentified or broken header: OpenCV gets its chance, then the error names it
        return None, None, -1


def _jpeg_complete(data: bytes) -> bool:
    """True when a JPEG has an end-of-image marker after its first scan.

    The marker segments are walked up to the first start-of-scan (an EXIF thumbnail carries its own
    end-of-image marker, so a plain search would be fooled); entropy-coded data cannot contain FF D9,
    so finding it after that point means the image data was not cut off.
    """
    n, i = len(data), 2
    while i + 4 <= n:
        if data[i] != 0xFF:
            return True  # not a marker where one belongs: leave the verdict to the decoder
        m = data[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m == 0xDA:  # start of scan
            return data.find(b"\xff\xd9", i + 2) != -1
        if m == 0x01 or 0xD0 <= m <= 0xD7:
            i += 2
            continue
        i += 2 + int.from_bytes(data[i + 2:i + 4], "big")
    return False


def _decode_pil(data: bytes) -> np.ndarray:
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im)
            a = (a >> 8 if im.mode.startswith("I;16") else np.clip(a, 0, 255)).astype(np.uint8)
            return np.ascontiguousarray(np.repeat(a[:, :, None], 3, axis=2))
        return np.array(im.convert("RGB"))


def read_rgb(path: PathLike, *, max_pixels: Optional[int] = None) -> np.ndarray:
    """An image file as a contiguous, writable ``HxWx3`` uint8 RGB array (EXIF orientation applied).

    ``max_pixels``: refuse images with more pixels than this (default ``max_pixels_default()``;
    0 or negative: no limit), checked from the header before decoding. Raises ``ImageReadError``
    (``ImageNotFoundError`` for a missing path) naming the file and the reason.
    """
    limit = max_pixels_default() if max_pixels is None else int(max_pixels)
    data = _read_bytes(path)
    if not data:
        raise ImageReadError(path, "empty file (0 bytes)")
    fmt, size, pixels = _header(data)
    if limit > 0 and (pixels > limit or (fmt == "?" and pixels < 0)):
        dims = f"{size[0]}x{size[1]} = {pixels:,} pixels" if size else (
            f"{pixels:,} pixels" if pixels >= 0 else "more pixels than Pillow's own limit")
        raise ImageReadError(
            path, f"image too large: {dims}, over the limit of {limit:,} pixels (read_rgb(max_pixels=...) or "
            f"the environment variable {_ENV_MAX_PIXELS} raises it; decoding needs ~6 bytes per pixel)")
    if size is not None and 0 in size:
        raise ImageReadError(path, f"image has no pixels ({size[0]}x{size[1]})")
    buf = np.frombuffer(data, dtype=np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR)  # applies EXIF orientation; any depth/channels -> 8-bit BGR
    except cv2.error as e:
        raise ImageReadError(path, f"cannot decode ({str(e).strip().splitlines()[-1]})") from None
    if img is not None:
        if (fmt == "JPEG" or data[:2] == b"\xff\xd8") and not _jpeg_complete(data):
            raise ImageReadError(path, "truncated JPEG (the image data ends before its end-of-image marker)")
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB, dst=img)  # in place: no second full-size buffer
    if fmt is None:
        raise ImageReadError(path, "not an image (unrecognised file format)")
    # Pillow knows the format but OpenCV could not decode it: a format OpenCV lacks, or a broken file.
    try:
        return _decode_pil(data)
    except Exception as e:
        reason = str(e) or type(e).__name__
        if "truncated" in reason or isinstance(e, (EOFError, SyntaxError)):
            reason = f"truncated or corrupt {fmt} file ({reason})"
        else:
            reason = f"corrupt or unsupported {fmt} file ({reason})"
        raise ImageReadError(path, reason) from None
