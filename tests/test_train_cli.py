"""tools/train.py's command line: options after the KEY VALUE overrides, an odd override list named, Ctrl-C
printing the resume command (exit 130, no traceback), and every option's default in the tools' --help."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tool_loader import load_tool

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "cpu" / "v3_79_w025_synthetic.yaml"

train = load_tool("train")


def test_options_after_the_overrides_are_options():
    args = train.parse_args(["--config-file", "c.yaml", "SOLVER.MAX_EPOCHS", "1", "--no-progress",
                             "MODEL.WIDTH", "0.25", "--output-dir", "d", "--resume"])
    assert args.opts == ["SOLVER.MAX_EPOCHS", "1", "MODEL.WIDTH", "0.25"]
    assert args.no_progress and args.resume and args.output_dir == "d" and args.config_file == "c.yaml"
    ev = load_tool("evaluate").parse_args(["--config-file", "c", "--weights", "w", "DATASETS.TEST", "['x']",
                                           "--no-progress"])
    assert ev.opts == ["DATASETS.TEST", "['x']"] and ev.no_progress


def test_an_odd_override_list_names_the_key_without_a_value(capsys):
    assert train.main(["--config-file", str(CONFIG), "SOLVER.MAX_EPOCHS", "1", "MODEL.WIDTH"]) == 2
    err = capsys.readouterr().err
    assert "odd number (3)" in err and "'MODEL.WIDTH' has no value" in err


def test_ctrl_c_before_a_checkpoint_says_so(tmp_path, capsys, monkeypatch):
    import crop_classifier.engine as engine

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(engine, "train", stop)
    argv = ["--config-file", str(CONFIG), "--output-dir", str(tmp_path / "run"), "SOLVER.MAX_EPOCHS", "2"]
    assert train.main(argv) == 130
    err = capsys.readouterr().err
    assert f"no checkpoint in {tmp_path / 'run'} yet" in err and "--resume starts from scratch" in err
    assert err.rstrip().endswith(" ".join(["tools/train.py", *argv, "--resume"]))


def test_ctrl_c_prints_the_resume_command_and_exits_130(tmp_path):
    """A real run stopped by SIGINT to its process group (what Ctrl-C in a terminal sends)."""
    data, out = tmp_path / "data", tmp_path / "run"
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    argv = ["--config-file", str(CONFIG), "DATASETS.TRAIN", f"['synthetic:{data}/train:1:1']",
            "DATASETS.TEST", f"['synthetic:{data}/val:1:5']", "SOLVER.IMS_PER_BATCH", "4",
            "SOLVER.MAX_EPOCHS", "500", "TEST.EVAL_PERIOD", "0", "--output-dir", str(out), "--no-progress",
            # in-process loading: a SIGINT while DataLoader workers start for the next epoch can stall their
            # shutdown inside torch, which is not what this test is about
            "DATALOADER.NUM_WORKERS", "0"]
    proc = subprocess.Popen([sys.executable, str(REPO / "tools" / "train.py"), *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (out / "last_checkpoint").is_file() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.5)
        assert (out / "last_checkpoint").is_file(), "no checkpoint written in time"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err, err[-2000:]
    line = [ln for ln in err.splitlines() if ln.startswith("interrupted:")][-1]
    assert "the last complete checkpoint is " in line and line.endswith("DATALOADER.NUM_WORKERS 0 --resume")
    named = Path(line.split("the last complete checkpoint is ")[1].split(";")[0])
    assert named.is_file() and named.parent == out


@pytest.mark.parametrize("tool", ["train", "evaluate", "quantize", "export", "make_synthetic", "split_coco"])
def test_help_shows_every_default(tool, capsys, monkeypatch):
    import argparse

    seen = []
    original = argparse.ArgumentParser.format_help
    monkeypatch.setattr(argparse.ArgumentParser, "format_help", lambda self: seen.append(self) or original(self))
    module = load_tool(tool)
    with pytest.raises(SystemExit) as e:
        (module.parse_args if hasattr(module, "parse_args") else module.main)(["--help"])
    assert e.value.code == 0 and len(seen) == 1
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    checked = 0
    for action in seen[0]._actions:
        if not action.option_strings or action.required or action.dest == "help":
            continue
        assert action.help, f"{tool} {action.option_strings[0]}: no help, so argparse shows no default"
        if action.default is None:  # nothing given: the help says what happens, or argparse says None
            assert "default" in action.help or " ".join(action.help.split()) + " (default: None)" in text, \
                action.option_strings[0]
        else:
            assert f"(default: {action.default})" in text, action.option_strings[0]
            checked += 1
    assert checked >= 1
