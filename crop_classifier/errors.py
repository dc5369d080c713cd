"""Every error the package raises on purpose, in one place (each names the file, key, box or flag at fault).

Modules and callers import them from here only (``from crop_classifier.errors import CheckpointError``).
"""
from __future__ import annotations

import os
from typing import Mapping, Optional, Union


class CropClassifierError(Exception):
    """Base class of the package's own errors."""


class UsageError(CropClassifierError, ValueError):
    """A command-line or configuration problem the user must fix (tools exit with code 2)."""


class ParameterError(UsageError):
    """A library parameter with a bad value: ``param`` names it (``min_box_size``), ``detail`` says why. Front
    ends rewrite it in their own words (``--min-box-size``, ``MODEL.CROP_CLASSIFIER.MIN_BOX_SIZE``)."""

    def __init__(self, param: str, detail: str):
        super().__init__(f"{param}: {detail}")
        self.param = param
        self.detail = detail

    def __reduce__(self):
        return type(self), (self.param, self.detail)

    def as_flag(self, flags: Optional[Mapping[str, str]] = None) -> str:
        """The message with a command-line flag for the parameter: ``flags[param]``, else ``--param-name``."""
        return f"{(flags or {}).get(self.param) or '--' + self.param.replace('_', '-')}: {self.detail}"


def error_line(e: BaseException) -> str:
    """One line for a tool's stderr: a ``ParameterError`` in flag words (``ParameterError.as_flag``)."""
    return e.as_flag() if isinstance(e, ParameterError) else str(e)


class ConfigError(UsageError):
    """A config file or key that cannot be used (unknown key, bad value, ``_BASE_`` cycle, bad YAML)."""


class CheckpointError(CropClassifierError, ValueError):
    """A checkpoint or exported model that cannot be used: unreadable, unsafe, or not matching what was asked for."""


class WeightsUnavailableError(CropClassifierError, RuntimeError):
    """Pretrained weights (ImageNet, Detectron2 model zoo) could not be fetched (offline) or read."""


class BackendUnavailableError(UsageError):
    """An optional runtime (ONNX Runtime, OpenVINO, supervision, ...) is not installed."""


class FusionError(CropClassifierError, RuntimeError):
    """A model cannot be analysed for conv+BN folding (for example it is not torch.fx traceable)."""


class NonFiniteLossError(CropClassifierError, FloatingPointError):
    """Training produced a NaN/inf loss."""


class ImageReadError(CropClassifierError, OSError):
    """An image file that cannot be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: Union[str, os.PathLike], reason: str):
        super().__init__(f"{os.fspath(path)}: {reason}")
        self.path = os.fspath(path)
        self.reason = reason

    def __str__(self) -> str:  # OSError's own str() would show the errno form
        return f"{self.path}: {self.reason}"

    def __reduce__(self):  # picklable across DataLoader worker processes
        return type(self), (self.path, self.reason)


class ImageNotFoundError(ImageReadError, FileNotFoundError):
    """The path does not exist."""
