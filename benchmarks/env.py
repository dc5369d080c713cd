"""Versions and hardware recorded with every benchmark figure."""
from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Dict, Optional

import torch

from crop_classifier import __version__


_PACKAGES = ("torch", "torchvision", "numpy", "opencv-python-headless", "fvcore", "sal-detectron2", "psutil")


def _version(dist: str) -> Optional[str]:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> Optional[str]:
    try:
        repo = Path(__file__).resolve().parent  # git finds the checkout from any folder in it
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def environment(device: str = "cpu") -> Dict[str, object]:
    import psutil

    env: Dict[str, object] = {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "crop_classifier": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {p: _version(p) for p in _PACKAGES},
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "mkldnn": torch.backends.mkldnn.is_available(),
        "device": device,
        "cuda_available": torch.cuda.is_available(),
    }
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                      "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
                      "cudnn": torch.backends.cudnn.version()}
    return env
