"""Export (ONNX, TorchScript), CPU runtimes (ONNX Runtime, OpenVINO), int8, and load_classifier: parity with
the PyTorch inference form and every bad input (missing meta, another arch, missing runtime, int8 on CUDA,
unsupported precision/backend), nothing half-written."""
import json
import os
import sys

import pytest
import torch

from crop_classifier.data.synthetic import SYNTHETIC_CLASSES
from crop_classifier.deploy import (ExportOptions, OnnxRuntimeClassifier, OpenVinoClassifier, RuntimeOptions,
                                    TorchScriptClassifier, export_checkpoint, load_classifier)
from crop_classifier.deploy import export as export_mod
from crop_classifier.deploy import loader as loader_mod
from crop_classifier.deploy.quantize import (CalibrationOptions, encode_state, int8_meta, quantize_model,
                                             rebuild_int8)
from crop_classifier.errors import BackendUnavailableError, CheckpointError, ParameterError, UsageError
from crop_classifier.inference.runner import LOADER_FLAGS
from crop_classifier.second_stage import d2_error, flag_error
from crop_classifier.models.inference import InferenceClassifier, load_inference_classifier
from crop_classifier.models import build_classifier
from crop_classifier.models.weights import model_meta, save_checkpoint
from crop_classifier.structures import ClassifierMeta
from crop_classifier.utils.io import atomic_torch_save
from classifier_helpers import spread_weights
from tool_loader import load_tool
from numerics import assert_fp32_close, softmax_bound

RUNTIMES = [b for b in ("onnxruntime", "openvino") if loader_mod.installed(b)]

onnx = pytest.importorskip("onnx")
CLASSES = list(SYNTHETIC_CLASSES)


def trained_ish(arch="v3_79", seed=0):
    """A width-0.125 model whose BN statistics and head are non-trivial, so logits differ by whole units
    (random init gives near-zero logits, where any parity bound passes)."""
    return spread_weights(build_classifier(arch, len(CLASSES), width=0.125, aux_logits=False), seed)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = trained_ish()
    meta = model_meta(model, "v3_79", CLASSES, context=0.1, mode="letterbox")
    path = tmp_path_factory.mktemp("ckpt") / "clf.pth"
    save_checkpoint(path, model, meta)
    return path


@pytest.fixture(scope="module")
def crops():
    return torch.rand(3, 3, 79, 79, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def reference(ckpt, crops):
    clf = load_inference_classifier(ckpt)
    logits = clf.logits(crops)
    assert logits.std() > 0.5  # the parity bounds below are meaningful
    return clf, logits


@pytest.fixture(scope="module")
def onnx_file(ckpt, tmp_path_factory):
    return export_checkpoint(ckpt, tmp_path_factory.mktemp("onnx") / "clf.onnx")


def assert_parity(clf, reference, crops):
    ref_clf, ref_logits = reference
    assert_fp32_close(clf.logits(crops), ref_logits, what=repr(clf))  # float32 rounding on both sides
    assert (clf(crops) - ref_clf(crops)).abs().max() <= softmax_bound(ref_logits)
    assert clf.class_names == CLASSES and clf.input_size == 79
    assert clf.crop == ref_clf.crop and clf.meta.mean == ref_clf.meta.mean and clf.device.type == "cpu"


@pytest.mark.parametrize("options", [RuntimeOptions(), RuntimeOptions(threads=1, streams=2)], ids=["1x", "2x1"])
def test_onnxruntime_matches_torch(onnx_file, reference, crops, options):
    clf = OnnxRuntimeClassifier(onnx_file, options)
    assert_parity(clf, reference, crops)
    assert clf(crops[:1]).shape == (1, len(CLASSES)) and clf(crops[:0]).shape == (0, len(CLASSES))
    with pytest.raises(ValueError, match=r"\[N, 3, 79, 79\]"):
        clf(torch.rand(2, 3, 64, 64))


@pytest.mark.parametrize("options", [RuntimeOptions(threads=2), RuntimeOptions(threads=1, streams=2)],
                         ids=["1x2", "2x1"])
def test_openvino_matches_torch(onnx_file, reference, crops, options):
    pytest.importorskip("openvino")
    assert_parity(OpenVinoClassifier(onnx_file, options), reference, crops)


def test_torchscript_matches_torch(ckpt, reference, crops, tmp_path):
    path = export_checkpoint(ckpt, tmp_path / "clf.pt", ExportOptions(format="torchscript"))
    clf = load_classifier(path)
    assert isinstance(clf, TorchScriptClassifier)
    assert_parity(clf, reference, crops)


def test_static_batch_export_pads_the_last_chunk(ckpt, reference, crops, tmp_path):
    path = export_checkpoint(ckpt, tmp_path / "b2.onnx", ExportOptions(static_batch=2))
    clf = OnnxRuntimeClassifier(path)
    assert clf.static_batch == 2 and clf.session.get_inputs()[0].shape == [2, 3, 79, 79]
    assert_parity(clf, reference, crops)  # 3 crops: one full batch, one padded


def test_onnx_file_carries_meta_and_opset(onnx_file, ckpt):
    model = onnx.load(str(onnx_file))
    props = {p.key: p.value for p in model.metadata_props}
    meta = ClassifierMeta.from_dict(__import__("json").loads(props[export_mod.META_KEY]))
    assert meta.class_names == tuple(CLASSES) and meta.crop.context == 0.1 and meta.crop.mode == "letterbox"
    assert meta.arch == "v3_79" and meta.width == 0.125 and meta.input_size == 79
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17


def test_export_tool(ckpt, tmp_path, capsys):
    tool = load_tool("export")
    out = tmp_path / "out" / "clf.onnx"
    assert tool.main(["--weights", str(ckpt), "--output", str(out)]) == 0 and out.is_file()
    assert tool.main(["--weights", str(ckpt), "--output", str(tmp_path / "x.onnx"), "--opset", "13"]) == 2
    assert "--opset 13" in capsys.readouterr().err
    assert tool.main(["--weights", str(tmp_path / "nope.pth"), "--output", str(tmp_path / "y.onnx")]) == 2
    assert "nope.pth" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()


def test_failed_export_leaves_nothing(ckpt, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(export_mod, "onnx_bytes", boom)
    with pytest.raises(RuntimeError):
        export_checkpoint(ckpt, tmp_path / "clf.onnx")
    assert list(tmp_path.iterdir()) == []


def strip_meta(src, dst):
    model = onnx.load(str(src))
    del model.metadata_props[:]
    onnx.save(model, str(dst))


def test_exported_file_without_meta_is_refused(onnx_file, tmp_path):
    strip_meta(onnx_file, tmp_path / "bare.onnx")
    for backend in RUNTIMES:  # those installed (a core install may have ONNX Runtime only)
        with pytest.raises(CheckpointError, match=r"bare\.onnx.*no 'crop_classifier_meta'"):
            load_classifier(tmp_path / "bare.onnx", backend)
    ts = torch.jit.trace(trained_ish(), torch.rand(1, 3, 79, 79))
    torch.jit.save(ts, str(tmp_path / "bare.pt"))
    with pytest.raises(CheckpointError, match=r"bare\.pt.*no 'crop_classifier_meta'"):
        load_classifier(tmp_path / "bare.pt")


def test_exported_file_of_another_arch_is_refused(onnx_file, tmp_path):
    with pytest.raises(CheckpointError, match=r"clf\.onnx.*arch is 'v3_79' but 'v3_151'"):
        load_classifier(onnx_file, "onnxruntime", expected_meta={"arch": "v3_151"})
    # meta claiming another arch than the graph: the graph's input size gives it away
    model = onnx.load(str(onnx_file))
    meta = ClassifierMeta.from_dict(model_meta(build_classifier("v3_151", 12, width=0.125), "v3_151", CLASSES))
    for p in model.metadata_props:
        if p.key == export_mod.META_KEY:
            p.value = export_mod.meta_json(meta)
    onnx.save(model, str(tmp_path / "liar.onnx"))
    for backend in RUNTIMES:  # those installed (a core install may have ONNX Runtime only)
        with pytest.raises(CheckpointError, match=r"liar\.onnx.*exported from another model"):
            load_classifier(tmp_path / "liar.onnx", backend)


def test_garbage_files_are_refused_naming_them(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(CheckpointError, match=r"junk\.onnx"):
        load_classifier(tmp_path / "junk.onnx")
    with pytest.raises(CheckpointError, match=r"missing\.onnx"):
        load_classifier(tmp_path / "missing.onnx")


def test_checkpoint_on_runtime_is_exported_once_and_cached(ckpt, reference, crops, monkeypatch, tmp_path):
    monkeypatch.setenv("CROP_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    clf = load_classifier(ckpt, "onnxruntime")
    cached = list((tmp_path / "cache" / "onnx").glob("clf-*.onnx"))
    assert isinstance(clf, OnnxRuntimeClassifier) and len(cached) == 1 and clf.path == cached[0]
    assert not list(ckpt.parent.glob("*.onnx"))  # nothing piles up beside the checkpoint
    assert_parity(clf, reference, crops)
    monkeypatch.setattr(loader_mod, "export_checkpoint", lambda *a, **k: pytest.fail("exported twice"))
    if "openvino" in RUNTIMES:
        assert load_classifier(ckpt, "openvino").path == cached[0]
    assert not [f for f in cached[0].parent.iterdir() if f.name.endswith(".tmp")]


def test_cache_key_follows_the_checkpoint_content_and_old_entries_go(tmp_path, monkeypatch):
    monkeypatch.setenv("CROP_CLASSIFIER_CACHE", str(tmp_path / "cache"))
    model = trained_ish(seed=3)
    path, other = tmp_path / "c.pth", tmp_path / "copy" / "c.pth"
    save_checkpoint(path, model, model_meta(model, "v3_79", CLASSES))
    other.parent.mkdir()
    other.write_bytes(path.read_bytes())
    first = loader_mod.cached_onnx(path)
    assert loader_mod.cached_onnx(other) == first  # same bytes elsewhere: the same entry
    assert first.parent == tmp_path / "cache" / "onnx" and first.name.startswith("c-")
    model.fc.bias.data += 1
    save_checkpoint(path, model, model_meta(model, "v3_79", CLASSES))
    second = loader_mod.cached_onnx(path)
    assert first != second and second.is_file()
    assert first.is_file()  # the copy still uses the old entry
    other.write_bytes(path.read_bytes())
    assert loader_mod.cached_onnx(other) == second
    assert not first.exists()  # no path uses it any more: pruned
    assert sorted(p.name for p in second.parent.iterdir()) == sorted([second.name, "index.json"])


def test_cache_is_bounded_least_recently_used_first(tmp_path):
    folder = tmp_path / "onnx"
    folder.mkdir()
    names = ["a-1-e1o17.onnx", "b-2-e1o17.v3_79.onnx", "b-2-e1o17.v3_151.onnx", "c-3-e1o17.onnx", "d-4-e1o17.onnx"]
    for i, name in enumerate(names):
        (folder / name).write_bytes(b"x" * 1000)
        os.utime(folder / name, (1000 + i, 1000 + i))
    # 5000 bytes, bound 2500: the oldest entries go whole (b's two route files together), the new one stays
    gone = loader_mod.prune_cache(folder, "/x/c.pth", "c-3-e1o17.onnx", max_bytes=2500)
    assert sorted(p.name for p in gone) == sorted(names[:3])
    assert sorted(p.name for p in folder.iterdir()) == ["c-3-e1o17.onnx", "d-4-e1o17.onnx", "index.json"]
    # the entry just used stays even alone over the bound
    assert loader_mod.prune_cache(folder, "/x/c.pth", "c-3-e1o17.onnx", max_bytes=10) == [folder / "d-4-e1o17.onnx"]
    assert (folder / "c-3-e1o17.onnx").is_file()
    assert json.loads((folder / "index.json").read_text()) == {"/x/c.pth": "c-3-e1o17.onnx"}


def hide_module(monkeypatch, name):
    monkeypatch.setitem(sys.modules, name, None)  # import raises ImportError
    real = loader_mod.importlib.util.find_spec
    monkeypatch.setattr(loader_mod.importlib.util, "find_spec", lambda n, *a: None if n == name else real(n, *a))


@pytest.mark.parametrize("runtime,extra", [("onnxruntime", "onnx"), ("openvino", "openvino")])
def test_missing_runtime_names_the_extra(ckpt, onnx_file, monkeypatch, runtime, extra):
    hide_module(monkeypatch, runtime)
    for path in (ckpt, onnx_file):
        with pytest.raises(BackendUnavailableError, match=rf"pip install crop_classifier\[{extra}\]"):
            load_classifier(path, runtime)


def test_default_backend_falls_back_to_torch_only_when_not_asked(ckpt, monkeypatch):
    hide_module(monkeypatch, "onnxruntime")
    monkeypatch.setattr(loader_mod, "DEFAULT_CPU_BACKEND", "onnxruntime")
    assert isinstance(load_classifier(ckpt), InferenceClassifier)
    with pytest.raises(BackendUnavailableError):
        load_classifier(ckpt, "onnxruntime")


def test_bad_arguments_name_the_parameter(ckpt, onnx_file):
    """The library names its own parameter; a front end reads it in its words (flag_error, d2_error)."""
    cases = [
        ("backend", "expected one of .*got 'tensorrt'", lambda: load_classifier(ckpt, "tensorrt")),
        ("precision", "expected one of .*got 'fp64'", lambda: load_classifier(ckpt, precision="fp64")),
        ("precision", "fp16: CPUs", lambda: load_classifier(ckpt, precision="fp16")),  # CPU
        ("precision", "bf16: the onnxruntime backend", lambda: load_classifier(onnx_file, "onnxruntime",
                                                                              precision="bf16")),
        ("precision", "int8: .*tools/quantize.py", lambda: load_classifier(ckpt, precision="int8")),
        ("backend", "torch: .*ONNX file", lambda: load_classifier(onnx_file, "torch")),
        ("backend", "openvino runs on CPU", lambda: load_classifier(ckpt, "openvino", device="cuda")),
        ("streams", "expected a positive integer, got 0",
         lambda: load_classifier(onnx_file, options=RuntimeOptions(streams=0))),
        ("path", "',': no file named", lambda: load_classifier(",")),
    ]
    for param, detail, call in cases:
        with pytest.raises(ParameterError, match=f"^{param}: {detail}") as e:
            call()
        assert e.value.param == param and not str(e.value).startswith("--")
    assert flag_error(e.value, LOADER_FLAGS) == f"--classifier-weights: {e.value.detail}"
    keys = {"path": "MODEL.CROP_CLASSIFIER.WEIGHTS"}  # as the Detectron2 plugin names it (d2.meta_arch)
    assert d2_error(e.value, keys=keys) == f"MODEL.CROP_CLASSIFIER.WEIGHTS: {e.value.detail}"


# ------------------------------------------------------------------------------------------------ int8
@pytest.fixture(scope="module")
def int8_ckpt(tmp_path_factory):
    """A trained-ish model quantized on crops from its own input distribution (min/max observers: fast)."""
    model = trained_ish(seed=5)
    meta = ClassifierMeta.from_dict(model_meta(model, "v3_79", CLASSES))
    g = torch.Generator().manual_seed(2)
    calib = [torch.rand(16, 3, 79, 79, generator=g) for _ in range(2)]  # crops in [0, 1]
    qmodel = quantize_model(model, meta, iter(calib), observer="minmax")
    folder = tmp_path_factory.mktemp("int8")
    save_checkpoint(folder / "fp32.pth", model, meta.to_dict())
    path = folder / "int8.pth"
    atomic_torch_save(path, {"model": encode_state(qmodel.state_dict()),
                             "meta": int8_meta(meta, CalibrationOptions(["random"], num_crops=32))})
    return folder / "fp32.pth", path, qmodel


def test_int8_checkpoint_loads_and_agrees_with_fp32(int8_ckpt):
    fp32_path, int8_path, qmodel = int8_ckpt
    assert torch.load(int8_path, weights_only=True)["meta"]["quantized"] == "x86-int8"
    clf = load_classifier(int8_path)
    assert isinstance(clf, InferenceClassifier) and clf.meta.extra["quantized"] == "x86-int8"
    assert load_classifier(int8_path, "torch", precision="int8").meta == clf.meta
    x = torch.rand(64, 3, 79, 79, generator=torch.Generator().manual_seed(9))
    # the rebuilt checkpoint is exactly the quantized model that was saved
    assert torch.equal(clf.logits(x), qmodel((x - clf.mean) / clf.std))
    fp32 = load_classifier(fp32_path, "torch")
    agree = (clf(x).argmax(1) == fp32(x).argmax(1)).float().mean().item()
    assert agree >= 0.9, agree
    assert (clf(x) - fp32(x)).abs().max() < 0.2


def test_int8_bad_inputs(int8_ckpt, tmp_path):
    _, int8_path, _ = int8_ckpt
    with pytest.raises(ParameterError, match="^device: cuda.*int8 checkpoint.*CPU only"):
        load_classifier(int8_path, device="cuda")
    with pytest.raises(ParameterError, match="^precision: bf16.*int8 checkpoint"):
        load_classifier(int8_path, precision="bf16")
    with pytest.raises(ParameterError, match="^backend: onnxruntime.*int8 checkpoint"):
        load_classifier(int8_path, "onnxruntime")
    with pytest.raises(UsageError, match="int8"):
        export_checkpoint(int8_path, tmp_path / "q.onnx")
    assert not (tmp_path / "q.onnx").exists()
    obj = torch.load(int8_path, weights_only=True)
    obj["meta"]["num_classes"], obj["meta"]["class_names"] = 3, CLASSES[:3]
    torch.save(obj, tmp_path / "wrong.pth")
    with pytest.raises(CheckpointError, match=r"wrong\.pth.*int8 weights do not match"):
        load_classifier(tmp_path / "wrong.pth")


def test_rebuild_refuses_unknown_quantization(int8_ckpt):
    _, int8_path, _ = int8_ckpt
    obj = torch.load(int8_path, weights_only=True)
    meta = ClassifierMeta.from_dict({**obj["meta"], "quantized": "qnnpack-int4"})
    with pytest.raises(CheckpointError, match="qnnpack-int4"):
        rebuild_int8(obj["model"], meta, "x.pth")


def test_quantize_tool(tmp_path, capsys):
    model = trained_ish(seed=7)
    ckpt = tmp_path / "clf.pth"
    save_checkpoint(ckpt, model, model_meta(model, "v3_79", CLASSES, context=0.1, mode="square"))
    tool = load_tool("quantize")
    out = tmp_path / "int8.pth"
    assert tool.main(["--weights", str(ckpt), "--output", str(out)]) == 2
    assert "--calib-dataset" in capsys.readouterr().err and not out.exists()
    assert tool.main(["--weights", str(ckpt), "--output", str(tmp_path / "q.safetensors"), "--calib-dataset", "x"]) == 2
    assert "--output" in capsys.readouterr().err
    data = f"synthetic:{tmp_path / 'train'}:2:0"
    held_out = f"synthetic:{tmp_path / 'val'}:1:1"
    assert tool.main(["--weights", str(ckpt), "--output", str(out), "--calib-dataset", data,
                      "--calib-crops", "16", "--observer", "minmax", "--eval-dataset", held_out]) == 0
    meta = torch.load(out, weights_only=True)["meta"]
    assert meta["quantized"] == "x86-int8" and meta["quantization"]["calib_datasets"] == [data]
    result = meta["quantization"]["eval"]
    assert result["crops"] > 0 and set(result["top1"]) == {"fp32", "int8"} and result["agreement"]["fp32"] == 1.0
    clf = load_classifier(out)
    assert clf(torch.rand(2, 3, 79, 79)).shape == (2, len(CLASSES))
    assert tool.main(["--weights", str(out), "--output", str(tmp_path / "again.pth"), "--calib-dataset", data]) == 2
    assert "already an int8" in capsys.readouterr().err


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_torchscript_and_torch_backends_match_cpu(ckpt, reference, crops, tmp_path):
    path = export_checkpoint(ckpt, tmp_path / "clf.pt", ExportOptions(format="torchscript"))
    ts = load_classifier(path, device="cuda")
    assert ts.device.type == "cuda"
    assert (ts.logits(crops).cpu() - reference[1]).abs().max() <= 1e-3
    for precision in ("fp32", "bf16", "fp16"):
        clf = load_classifier(ckpt, "torch", device="cuda", precision=precision)
        tol = 1e-3 if precision == "fp32" else 0.15
        assert (clf.logits(crops).cpu() - reference[1]).abs().max() <= tol, precision


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack and /proc/self/maps: Linux")
def test_openvino_classifiers_leave_a_valid_signal_stack(onnx_file, tmp_path):
    """OpenVINO's CPU plugin swaps the thread's alternate signal stack per Core and restores the previous one
    when the Core goes: two Cores released in creation order left it pointing at freed memory, and the next
    Python signal handler (torch's DataLoader SIGCHLD one, on any child's exit) segfaulted the test suite."""
    pytest.importorskip("openvino")
    import ctypes
    import gc
    import signal
    import subprocess

    class StackT(ctypes.Structure):
        _fields_ = [("ss_sp", ctypes.c_void_p), ("ss_flags", ctypes.c_int), ("ss_size", ctypes.c_size_t)]

    def alt_stack_mapped() -> bool:
        st = StackT()
        assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(st)) == 0
        if not st.ss_sp or st.ss_flags & 2:  # SS_DISABLE: no alternate stack, nothing dangling
            return True
        for line in open("/proc/self/maps"):
            lo, hi = (int(v, 16) for v in line.split()[0].split("-"))
            if lo <= st.ss_sp < hi:
                return True
        return False

    first, second = OpenVinoClassifier(onnx_file), OpenVinoClassifier(onnx_file)
    x = torch.rand(2, 3, first.input_size, first.input_size)
    first(x), second(x)
    del first
    gc.collect()
    del second
    gc.collect()
    assert alt_stack_mapped()
    previous = signal.signal(signal.SIGCHLD, lambda *_: None)  # a Python handler runs on that stack
    try:
        assert subprocess.run([sys.executable, "-c", "pass"]).returncode == 0
    finally:
        signal.signal(signal.SIGCHLD, previous)
