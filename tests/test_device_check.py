"""benchmarks/device_check.py at its tiny setting on 2 fake CPU devices: it runs and writes every section."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_device_check_tiny_writes_every_section(tmp_path):
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
    )
    cmd = [sys.executable, str(ROOT / "benchmarks/device_check.py"), "--tiny", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "device.json").read_text())
    assert len(report["devices"]) == 2 and report["backend"] == "cpu"
    assert {(r["mode"], r["batch"]) for r in report["throughput"]} == {("image", 2), ("pixel", 2)}
    for row in report["throughput"]:
        assert row["images_per_s"] > 0
        assert {"backbone_ms_per_image", "sampling_ms_per_image", "reconstruction_ms_per_image"} <= set(row)
    assert [r["lam"] for r in report["crossover"]] == [2, 6]
    assert all(r["gathered_ms_per_image"] > 0 and r["masked_ms_per_image"] > 0 for r in report["crossover"])
    fits = report["largest_bank"]["efficientnet_lite0"]
    assert fits["one_device"] == 32 and fits["sharded"] == 32  # every N up to --bank-limit ran
