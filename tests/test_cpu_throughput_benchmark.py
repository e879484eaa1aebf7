"""benchmarks/cpu_throughput.py at a tiny setting: two worker processes fit, score in alternation and
report both; this checkout against itself gives identical maps."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "cpu_throughput.py"


def run(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, str(SCRIPT), *argv], env=env, capture_output=True, text=True, timeout=600
    )


def test_cpu_throughput_compares_two_checkouts_side_by_side(tmp_path):
    out = tmp_path / "throughput.json"
    proc = run(
        "--before", str(ROOT), "--n-train", "64", "--n-test", "8", "--batch-sizes", "8",
        "--rounds", "2", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [(row["code"], row["batch"]) for row in report["rows"]] == [("before", 8), ("after", 8)]
    for row in report["rows"]:
        assert len(row["fused_wall_seconds"]) == len(row["stage_seconds"]) == 2
        assert row["images_per_s"] > 0 and row["backbone_ms_per_image"] > 0
        assert 0 < row["scorer_over_backbone"] < 10
        assert {"backbone", "sampling", "reconstruction", "maps"} <= set(row["stage_seconds"][0])
    assert report["maps_max_relative_difference"] == 0.0  # the same code on the same images
    assert "| 8 | after / before (speed) |" in proc.stdout


def test_cpu_throughput_names_a_folder_that_is_not_a_checkout(tmp_path):
    proc = run("--before", str(tmp_path))
    assert proc.returncode == 2
    assert f"--before {tmp_path}: expected a checkout of subspace-jax" in proc.stderr
