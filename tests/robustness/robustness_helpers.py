"""Helpers of the robustness suite: small images and files generated in the test."""
import io
import struct
import zlib

import cv2
import numpy as np


def smooth_rgb(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth, asymmetric RGB picture (survives JPEG well; every rotation/flip is distinguishable)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([255 * x / max(w - 1, 1), 255 * y / max(h - 1, 1), 128 + 60 * np.sin(x / 7 + y / 11)], axis=2)
    img[: h // 4, : w // 4] = (250, 20, 20)  # a red top-left corner
    img += rng.normal(0, 2, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def encode(rgb: np.ndarray, ext: str, **params) -> bytes:
    arr = rgb[..., ::-1] if rgb.ndim == 3 and rgb.shape[2] >= 3 else rgb
    if rgb.ndim == 3 and rgb.shape[2] == 4:  # RGBA -> BGRA
        arr = rgb[..., [2, 1, 0, 3]]
    flags = [v for kv in params.items() for v in (getattr(cv2, kv[0]), kv[1])]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(arr), flags)
    assert ok
    return buf.tobytes()


def pil_bytes(img, fmt: str, **kw) -> bytes:
    b = io.BytesIO()
    img.save(b, fmt, **kw)
    return b.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def constant_png(width: int, height: int, *, idat: bool = True) -> bytes:
    """An 8-bit RGB PNG of zeros, compressed row by row (a 12000x9000 one is ~300 KB, built without
    holding the pixels); ``idat=False`` writes only the header (what a decompression bomb looks like
    before its data)."""
    head = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    if not idat:
        return head + _chunk(b"IEND", b"")
    c = zlib.compressobj(1)
    row = bytes(1 + 3 * width)
    data = b"".join([c.compress(row) for _ in range(height)] + [c.flush()])
    return head + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
