"""Checkpoints from the internet: loading never runs code; broken or mismatched files give errors that
name the file and say what was expected and what was found."""
import copy
import functools
import os
import pickle
import re
from pathlib import Path

import pytest
import torch

from crop_classifier.errors import CheckpointError
from crop_classifier.models import (
    build_classifier,
    classifier_from_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from crop_classifier.models.weights import load_imagenet_weights, model_meta

REPO = Path(__file__).resolve().parents[2]


@functools.lru_cache(maxsize=None)
def _built(arch, k, width):
    torch.manual_seed(0)
    return build_classifier(arch, k, width=width, aux_logits=False)


def _tiny(arch="v3_79", k=3, width=0.125):
    return copy.deepcopy(_built(arch, k, width))  # building costs ~1 s on 2 cores; copying does not


def _meta(model, arch="v3_79", names=("a", "b", "c")):
    return model_meta(model, arch, list(names), context=0.1, mode="square")


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    m = _tiny()
    return save_checkpoint(d / "good.pth", m, _meta(m)), save_checkpoint(d / "good.safetensors", m, _meta(m))


class _RunsCode:
    """Unpickling this calls ``Path(marker).touch()``: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _malicious(tmp_path, *, torch_zip=True):
    marker = tmp_path / "pwned"
    m = _tiny()
    obj = {"model": m.state_dict(), "meta": _meta(m), "payload": _RunsCode(marker)}
    path = tmp_path / ("evil.pth" if torch_zip else "evil_legacy.pkl")
    if torch_zip:
        torch.save(obj, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(obj, f)
    # The file really would run code under a plain unpickler: prove it on a copy, then remove the trace.
    with open(path, "rb") as f:
        if torch_zip:
            torch.load(f, weights_only=False)
        else:
            pickle.load(f)
    assert marker.exists()
    marker.unlink()
    return path, marker


@pytest.mark.parametrize("torch_zip", [True, False])
def test_code_in_a_checkpoint_is_refused_and_never_runs(tmp_path, torch_zip):
    path, marker = _malicious(tmp_path, torch_zip=torch_zip)
    loaders = [
        lambda: load_checkpoint(path),
        lambda: classifier_from_checkpoint(path),
        lambda: build_classifier("v3_79", 3, width=0.125, aux_logits=False, weights=str(path)),
        lambda: load_imagenet_weights(_tiny(), path),
    ]
    for load in loaders:
        with pytest.raises(CheckpointError) as info:
            load()
        assert str(path) in str(info.value)
        # a torch file is refused for its objects; a bare pickle is not even read as a checkpoint
        assert "refused" in str(info.value) or (not torch_zip and "cannot read" in str(info.value))
        assert not marker.exists(), "unpickling ran the checkpoint's code"


def test_second_stage_and_trainer_resume_refuse_code(tmp_path):
    from crop_classifier import load_classifier

    path, marker = _malicious(tmp_path)
    with pytest.raises(CheckpointError, match="refused"):
        load_classifier(path, "torch", device="cpu")
    from crop_classifier.engine.checkpoint import EpochCheckpointer

    (tmp_path / "last_checkpoint").write_text(path.name)
    with pytest.raises(CheckpointError, match="refused"):
        EpochCheckpointer(tmp_path).load_last()
    assert not marker.exists()


def test_no_unsafe_deserialisation_in_the_sources():
    """Every load in the package and tools is weights_only/safetensors; no pickle, unsafe YAML, eval."""
    bad = []
    unsafe = [
        (re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"), "torch.load without weights_only=True"),
        (re.compile(r"\bpickle\.loads?\("), "pickle.load"),
        (re.compile(r"allow_pickle\s*=\s*True"), "numpy allow_pickle=True"),
        (re.compile(r"yaml\.(unsafe_)?load\((?![^)]*Loader\s*=\s*yaml\.SafeLoader)"), "yaml.load (unsafe)"),
        (re.compile(r"(?<![\w.])(?<!def )(eval|exec)\("), "eval/exec"),  # a method named eval is fine
    ]
    for root in (REPO / "crop_classifier", REPO / "tools"):
        for py in root.rglob("*.py"):
            text = py.read_text()
            # calls may span lines: join each call's continuation
            flat = re.sub(r"\(\s*\n\s*", "(", text)
            for pattern, what in unsafe:
                for m in pattern.finditer(flat):
                    line = flat[: m.start()].count("\n") + 1
                    bad.append(f"{py.relative_to(REPO)}:{line}: {what}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("fraction", [0.0, 0.02, 0.5, 0.98])
def test_truncated_checkpoints(tmp_path, good_ckpt, fraction):
    for src in good_ckpt:
        data = src.read_bytes()
        cut = tmp_path / f"cut_{fraction}{src.suffix}"
        cut.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(CheckpointError) as info:
            classifier_from_checkpoint(cut)
        msg = str(info.value)
        assert str(cut) in msg and ("truncated" in msg or "not a readable" in msg or "cannot read" in msg), msg


def test_not_a_checkpoint_at_all(tmp_path):
    for name, data in (("notes.pth", b"hello"), ("page.safetensors", b"<html>404</html>")):
        p = tmp_path / name
        p.write_bytes(data)
        with pytest.raises(CheckpointError, match=re.escape(str(p))):
            classifier_from_checkpoint(p)
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        classifier_from_checkpoint(tmp_path / "missing.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(CheckpointError, match="expected a dict.*found list"):
        classifier_from_checkpoint(tmp_path / "list.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "sd.pth")
    with pytest.raises(CheckpointError, match="not a crop_classifier checkpoint"):
        classifier_from_checkpoint(tmp_path / "sd.pth")


def test_wrong_architecture_names_expected_and_found(good_ckpt):
    for path in good_ckpt:
        with pytest.raises(CheckpointError, match=r"arch is 'v3_79' but 'v3_151' was expected"):
            classifier_from_checkpoint(path, expected_meta={"arch": "v3_151"})
        with pytest.raises(CheckpointError, match=r"width is 0.125 but 0.25 was expected"):
            load_checkpoint(path, {"width": 0.25})
        with pytest.raises(CheckpointError, match=r"arch is 'v3_79' but 'v3_299' was expected"):
            build_classifier("v3_299", 3, width=0.125, weights=str(path))


def test_unknown_architecture_in_meta(tmp_path):
    m = _tiny()
    meta = {**_meta(m), "arch": "resnet50"}
    p = save_checkpoint(tmp_path / "alien.pth", m, meta)
    with pytest.raises(CheckpointError, match=r"alien.pth.*resnet50"):
        classifier_from_checkpoint(p)


def test_wrong_class_count(tmp_path, good_ckpt):
    with pytest.raises(CheckpointError, match=r"num_classes is 3 but 5 was expected"):
        load_checkpoint(good_ckpt[0], {"num_classes": 5})
    with pytest.raises(CheckpointError, match=r"class_names is \['a', 'b', 'c'\] but \['a', 'b'\] was expected"):
        load_checkpoint(good_ckpt[0], {"class_names": ["a", "b"]})
    # meta claims 5 classes but the head holds 3
    m = _tiny()
    p = save_checkpoint(tmp_path / "liar.pth", m, {**_meta(m, names="abcde"), "num_classes": 5})
    with pytest.raises(CheckpointError, match=r"liar.pth: weights do not match.*5 classes.*fc.weight: checkpoint \[3, 256\], expected \[5, 256\]"):
        classifier_from_checkpoint(p)
    p = save_checkpoint(tmp_path / "names.pth", m, {**_meta(m, names="ab")})
    with pytest.raises(CheckpointError, match=r"names.pth: meta lists 2 class names for num_classes=3"):
        classifier_from_checkpoint(p)


def test_missing_metadata(tmp_path):
    m = _tiny()
    meta = _meta(m)
    for key in ("arch", "num_classes", "class_names", "input_size", "width"):
        p = tmp_path / f"no_{key}.pth"
        torch.save({"model": m.state_dict(), "meta": {k: v for k, v in meta.items() if k != key}}, p)
        with pytest.raises(CheckpointError, match=rf"no_{key}.pth: checkpoint metadata is missing \['{key}'\]"):
            classifier_from_checkpoint(p)
    from safetensors.torch import save_file

    st = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(st))
    with pytest.raises(CheckpointError, match=r"bare.safetensors: not a crop_classifier checkpoint"):
        classifier_from_checkpoint(st)


def test_weights_of_another_width(tmp_path):
    small, meta = _tiny(width=0.125), _meta(_tiny(width=0.25))
    p = tmp_path / "mixed.pth"
    torch.save({"model": small.state_dict(), "meta": meta}, p)  # meta says 0.25, tensors are 0.125
    with pytest.raises(CheckpointError, match=r"mixed.pth: weights do not match the architecture"):
        classifier_from_checkpoint(p)


def test_good_checkpoints_still_load(good_ckpt):
    x = torch.rand(2, 3, 79, 79)
    outs = []
    for path in good_ckpt:
        model, meta = classifier_from_checkpoint(path, expected_meta={"arch": "v3_79", "num_classes": 3})
        assert meta["class_names"] == ["a", "b", "c"] and not model.training
        with torch.no_grad():
            outs.append(model(x))
    assert torch.allclose(outs[0], outs[1])


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    """A crash while writing leaves the previous checkpoint whole and no temporary file behind."""
    m = _tiny()
    p = save_checkpoint(tmp_path / "model.pth", m, _meta(m))
    before = p.read_bytes()

    def crash(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # e.g. Ctrl-C mid-write

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(p, _tiny(k=4), _meta(_tiny(k=4), names="abcd"))
    assert p.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.pth"]
