"""Atomic file writes: a reader (or a crash) never sees a half-written output."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Union

PathLike = Union[str, os.PathLike]
_UMASK = os.umask(0)
os.umask(_UMASK)


def _atomic_write(path: PathLike, write: Callable[[Any], None], mode: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary file lives in the destination folder so os.replace is a same-filesystem rename.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates 0600; outputs get the usual permissions (0666 minus the umask).
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    return _atomic_write(path, lambda f: f.write(data), "wb")


def atomic_write_text(path: PathLike, text: str) -> Path:
    return _atomic_write(path, lambda f: f.write(text), "w")


def atomic_save_json(path: PathLike, obj: Any, **kwargs: Any) -> Path:
    kwargs.setdefault("indent", 2)
    return _atomic_write(path, lambda f: json.dump(obj, f, **kwargs), "w")


def atomic_torch_save(path: PathLike, obj: Any) -> Path:
    import torch

    return _atomic_write(path, lambda f: torch.save(obj, f), "wb")
