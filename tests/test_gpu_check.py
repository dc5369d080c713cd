"""tools/gpu_check.sh: its plan (dry run), its CPU-runnable path end to end, bad usage."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.sh"


def run(*args, **env):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable, **env})


def test_dry_run_plans_the_cuda_steps(tmp_path):
    r = run("--dry-run", "--venv", str(tmp_path / "venv"), "--output", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"-m venv --system-site-packages {tmp_path / 'venv'}" in out
    assert "pip install -q -e .[test]" in out and "detectron2" not in out.lower()
    assert "pytest -q -p no:cacheprovider -m cuda tests" in out
    assert "preset='gpu', device='cuda'" in out and "compile=True" in out
    assert "run_torchvision_pipeline(device='cuda', **TV_PIPELINE_PRESETS['gpu'])" in out
    assert not (tmp_path / "venv").exists() and not (tmp_path / "out").exists()
    assert "compile=False" in run("--dry-run", "--no-compile").stdout


def test_cpu_mode_runs_every_step_and_prints_the_tables(tmp_path):
    r = run("--cpu", "--no-venv", "--output", str(tmp_path), GPU_CHECK_SECTIONS="crops")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "== CUDA tests" in r.stdout and "## Crops" in r.stdout and "all steps passed" in r.stdout
    assert (tmp_path / "benchmark" / "benchmark.json").is_file()
    # the pipeline rows: torchvision first stage + second stage, latency at 20 boxes and images/s of a batch
    assert "## Pipeline: torchvision first stage + second stage (cpu)" in r.stdout
    p = json.loads((tmp_path / "pipeline" / "pipeline.json").read_text())
    assert [row["boxes"] for row in p["rows"]] == [20] and p["throughput"][0]["boxes_per_image"] == 20
    assert [t["status"] for t in p["targets"]] == ["not a GPU run"] * 2


def test_a_failing_step_is_reported_and_the_rest_still_run(tmp_path):
    r = run("--cpu", "--no-venv", "--output", str(tmp_path), GPU_CHECK_SECTIONS="nosuchsection", GPU_CHECK_PIPELINE="0")
    assert r.returncode == 1 and "FAILED: benchmark (nosuchsection) on cpu" in r.stdout


def test_bad_option_is_a_usage_error():
    r = run("--frobnicate")
    assert r.returncode == 2 and "unknown option --frobnicate" in r.stderr
