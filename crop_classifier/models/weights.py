"""Weights: ImageNet files (torchvision/timm), our own checkpoints with metadata, safe loading only.

Every load uses ``torch.load(weights_only=True)`` or safetensors, so a checkpoint can never run code.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import urllib.error
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import CheckpointError, WeightsUnavailableError
from ..structures import IMAGENET_MEAN, IMAGENET_STD
from .inception_v3 import STEMS, RoutedInceptionV3
from .registry import ALL_ARCHITECTURES, create_classifier
from .routing import ROUTED_ARCH, Routes
from ..utils.io import atomic_torch_save, atomic_write_bytes

logger = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]

# torchvision's port of Google's Inception-v3 ImageNet weights (expects inputs in [-1, 1]).
IMAGENET_URL = "https://download.pytorch.org/models/inception_v3_google-0cc3c7bd.pth"
# Every flag named here must exist (tests parse this text and check each flag against the tools' parsers).
WEIGHTS_FLAG_HELP = (
    "pass a local file instead: build_classifier(..., weights='/path/to/inception_v3_google-0cc3c7bd.pth'), "
    "the config key MODEL.IMAGENET_WEIGHTS, or tools/train.py --imagenet-weights PATH"
)
REQUIRED_META = ("arch", "num_classes", "class_names", "input_size", "width")
HEAD_PREFIXES = ("fc.", "AuxLogits.fc.")
SAFETENSORS_META_KEY = "crop_classifier_meta"


# --------------------------------------------------------------------------------------------- raw reading
def _read_file(path: PathLike, map_location: Any = "cpu") -> Tuple[Dict[str, Any], Optional[dict]]:
    """Returns (object, safetensors meta or None). Never unpickles arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device=str(map_location)) as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
                raw_meta = (f.metadata() or {}).get(SAFETENSORS_META_KEY)
        except Exception as e:  # any parse failure of a foreign file is that file's problem, said as such
            raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
        try:
            meta = json.loads(raw_meta) if raw_meta else None
        except ValueError as e:
            raise CheckpointError(f"{path}: the {SAFETENSORS_META_KEY!r} metadata is not valid JSON ({e})") from e
        return tensors, meta
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        if not re.search(r"unsupported (global|class)", str(e), re.IGNORECASE):  # garbage bytes, not a forbidden object
            raise CheckpointError(f"{path}: cannot read checkpoint (truncated, corrupt or not a PyTorch file): {e}") from e
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors and plain containers, "
            f"which could run code when unpickled (loaded with weights_only=True). Details: {e}"
        ) from e
    except Exception as e:  # the weights-only unpickler raises KeyError/IndexError/... on garbage bytes
        raise CheckpointError(
            f"{path}: cannot read checkpoint (truncated, corrupt or not a PyTorch file): {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict (state dict or checkpoint), found {type(obj).__name__}")
    return obj, None


def _clean_state_dict(sd: Mapping[str, Any]) -> Dict[str, torch.Tensor]:
    """Strips the wrappers DDP/timm/Lightning add so foreign ImageNet files load."""
    out = {}
    for k, v in sd.items():
        for prefix in ("module.", "model.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


# --------------------------------------------------------------------------------------------- our checkpoints
def save_checkpoint(path: PathLike, model: nn.Module, meta: Mapping[str, Any], extra: Optional[Mapping] = None) -> Path:
    """Writes ``{"model", "meta", **extra}`` atomically (``.safetensors``: tensors + meta as JSON metadata)."""
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"checkpoint meta is missing {missing}; required keys: {list(REQUIRED_META)}")
    model = getattr(model, "module", model)  # unwrap DDP
    sd = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    if path.suffix == ".safetensors":
        if extra:
            raise CheckpointError("safetensors checkpoints hold weights and meta only; use .pth for training state")
        from safetensors.torch import save

        data = save({k: v.contiguous() for k, v in sd.items()}, metadata={SAFETENSORS_META_KEY: json.dumps(dict(meta))})
        return atomic_write_bytes(path, data)
    obj = {"model": sd, "meta": dict(meta)}
    if extra:
        clash = set(extra) & set(obj)
        if clash:
            raise CheckpointError(f"extra checkpoint keys clash with reserved ones: {sorted(clash)}")
        obj.update(extra)
    return atomic_torch_save(path, obj)


def check_meta(meta: Mapping[str, Any], expected: Optional[Mapping[str, Any]], path: PathLike = "<checkpoint>") -> None:
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{path}: checkpoint metadata is missing {missing} (found keys {sorted(meta)})")
    for key, want in (expected or {}).items():
        if want is None:
            continue
        if key not in meta:
            raise CheckpointError(f"{path}: checkpoint metadata has no {key!r}; expected {want!r}")
        got = meta[key]
        same = abs(float(got) - float(want)) < 1e-9 if key == "width" else list(got) == list(want) if key == "class_names" else got == want
        if not same:
            raise CheckpointError(f"{path}: checkpoint {key} is {got!r} but {want!r} was expected")


def load_checkpoint(
    path: PathLike, expected_meta: Optional[Mapping[str, Any]] = None, map_location: Any = "cpu"
) -> Dict[str, Any]:
    """Loads one of our checkpoints safely and checks its meta against ``expected_meta``."""
    obj, st_meta = _read_file(path, map_location)
    if st_meta is not None:
        obj = {"model": obj, "meta": st_meta}
    if "model" not in obj or "meta" not in obj:
        raise CheckpointError(
            f"{path}: not a crop_classifier checkpoint (no 'model'/'meta' keys; found {sorted(obj)[:8]}); "
            "for ImageNet state dicts use build_classifier(..., weights=PATH)"
        )
    check_meta(obj["meta"], expected_meta, path)
    return obj


def classifier_from_checkpoint(
    path: PathLike, map_location: Any = "cpu", expected_meta: Optional[Mapping[str, Any]] = None
) -> Tuple[nn.Module, Dict[str, Any]]:
    """Rebuilds the classifier a checkpoint describes; returns (model in eval mode, meta)."""
    ckpt = load_checkpoint(path, expected_meta, map_location)
    meta, sd = ckpt["meta"], ckpt["model"]
    if len(meta["class_names"]) != meta["num_classes"]:
        raise CheckpointError(
            f"{path}: meta lists {len(meta['class_names'])} class names for num_classes={meta['num_classes']}"
        )
    try:
        model = create_classifier(
            meta["arch"], meta["num_classes"], width=meta["width"], aux_logits=any(k.startswith("AuxLogits.") for k in sd),
            routes=(meta.get("routes") or {}).get("archs"),
        )
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e
    own = model.state_dict()
    found = {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}
    problems = [f"{k}: checkpoint {list(found[k])}, expected {list(v.shape)}" for k, v in own.items()
                if k in found and found[k] != tuple(v.shape)]
    problems += [f"missing {k}" for k in own if k not in sd] + [f"unexpected {k}" for k in sd if k not in own]
    if problems:
        raise CheckpointError(
            f"{path}: weights do not match the architecture its meta names ({meta['arch']}, width {meta['width']}, "
            f"{meta['num_classes']} classes): {len(problems)} problem(s), e.g. " + "; ".join(problems[:4]))
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the architecture its meta names ({meta['arch']}): {e}") from e
    model.transform_input = bool(meta.get("transform_input", False))
    model.meta = dict(meta)
    return model.to(map_location).eval(), dict(meta)


# --------------------------------------------------------------------------------------------- ImageNet weights
def _download_imagenet() -> Dict[str, torch.Tensor]:
    try:
        return torch.hub.load_state_dict_from_url(IMAGENET_URL, map_location="cpu", progress=False, weights_only=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise WeightsUnavailableError(f"could not download ImageNet weights from {IMAGENET_URL} ({e}); {WEIGHTS_FLAG_HELP}") from e


def load_imagenet_weights(model: nn.Module, source: Union[PathLike, Mapping[str, torch.Tensor]], *, transform_input: bool = True) -> None:
    """Copies an ImageNet Inception-v3 state dict (torchvision or timm names) into any variant.

    The stems differ only in strides and pooling, so every tensor fits. A different class count
    re-initialises the classifier heads (logged). ``transform_input``: torchvision's Google weights
    expect [-1, 1] inputs; set False for weights trained on ImageNet-normalised input.
    """
    if isinstance(source, Mapping):
        sd, where = dict(source), "<state dict>"
    elif str(source) == "imagenet":
        sd, where = _download_imagenet(), IMAGENET_URL
    else:
        sd, _ = _read_file(source)
        where = str(source)
        if "model" in sd and isinstance(sd["model"], Mapping):
            sd = sd["model"]
        elif "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
            sd = sd["state_dict"]
    sd = _clean_state_dict(sd)
    own = model.state_dict()
    head_mismatch = [k for k in sd if k.startswith(HEAD_PREFIXES) and k in own and sd[k].shape != own[k].shape]
    if head_mismatch:
        logger.warning(
            "%s: classifier head has %d classes, model has %d: re-initialising %s",
            where, sd["fc.weight"].shape[0] if "fc.weight" in sd else -1, model.num_classes, ", ".join(head_mismatch),
        )
        for k in head_mismatch:
            del sd[k]
    if "AuxLogits.fc.weight" in sd and "AuxLogits.fc.weight" not in own:
        sd = {k: v for k, v in sd.items() if not k.startswith("AuxLogits.")}  # model built without aux head
    bad = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in sd.items() if k in own and v.shape != own[k].shape]
    if bad:
        raise CheckpointError(
            f"{where}: {len(bad)} tensors do not fit this model (ImageNet weights need width=1.0, model width "
            f"{getattr(model, 'width', '?')}): " + "; ".join(bad[:3])
        )
    unexpected = [k for k in sd if k not in own]
    if unexpected:
        raise CheckpointError(f"{where}: not an Inception-v3 state dict; unexpected keys {unexpected[:5]}")
    missing = [k for k in own if k not in sd and not k.startswith(HEAD_PREFIXES) and not k.startswith("AuxLogits.bn.")]
    if missing:
        raise CheckpointError(f"{where}: state dict lacks {len(missing)} Inception-v3 tensors, e.g. {missing[:5]}")
    model.load_state_dict(sd, strict=False)
    model.transform_input = transform_input


def own_checkpoint_meta(weights: PathLike) -> Optional[Dict[str, Any]]:
    """The ``meta`` of one of our checkpoints, or ``None`` for another weights file (ImageNet state dicts)."""
    obj, st_meta = _read_file(weights)
    meta = st_meta or (obj.get("meta") if isinstance(obj.get("meta"), Mapping) else None)
    return dict(meta) if meta is not None else None


def load_pretrained(model: nn.Module, weights: PathLike, *, arch: str, any_stem: bool = False) -> None:
    """``build_classifier(weights=...)``: "imagenet", an ImageNet file, or one of our checkpoints.

    ``any_stem``: initialisation rather than loading a trained model, so a checkpoint of another stem (same
    width) is taken too, as ImageNet weights are: the stems share every parameter."""
    if str(weights) != "imagenet":
        obj, st_meta = _read_file(weights)
        meta = st_meta or (obj.get("meta") if isinstance(obj.get("meta"), Mapping) else None)
        if meta is not None:  # our own checkpoint: it must describe this very model
            # The routed model shares every weight with each stem, so either side may be ``auto``.
            routed = ROUTED_ARCH in (arch, meta.get("arch"))
            ckpt = load_checkpoint(weights, {"width": model.width, "arch": None if routed or any_stem else arch})
            if ckpt["meta"]["arch"] not in ALL_ARCHITECTURES:
                raise CheckpointError(f"{weights}: checkpoint arch {ckpt['meta']['arch']!r} is none of "
                                      f"{', '.join(ALL_ARCHITECTURES)} (building {arch})")
            if ckpt["meta"]["num_classes"] != model.num_classes:
                load_imagenet_weights(model, ckpt["model"], transform_input=bool(ckpt["meta"].get("transform_input", False)))
                return
            model.load_state_dict(ckpt["model"], strict=model.AuxLogits is not None)
            model.transform_input = bool(ckpt["meta"].get("transform_input", False))
            return
    load_imagenet_weights(model, weights)


def model_meta(model: nn.Module, arch: str, class_names, *, routes: Any = None, **crop: Any) -> Dict[str, Any]:
    """The metadata every checkpoint carries; ``crop`` holds context/mode so inference crops like training.
    A routed model (``arch`` ``auto``) also records ``routes`` (``routing.Routes``: stems, input sizes and
    thresholds); its ``input_size`` is the smallest route's."""
    model = getattr(model, "module", model)
    meta = {
        "arch": arch,
        "num_classes": int(model.num_classes),
        "class_names": list(class_names),
        "input_size": int(model.input_size),
        "width": float(model.width),
        "transform_input": bool(model.transform_input),
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
    }
    if crop:
        meta["crop"] = dict(crop)
    if routes is None and isinstance(model, RoutedInceptionV3):
        routes = Routes(tuple(a for s in model.stems for a, spec in STEMS.items() if spec == s))
    if routes is not None:
        meta["routes"] = routes.to_meta()
    return meta
