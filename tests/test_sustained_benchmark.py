"""benchmarks/sustained.py at a tiny setting: memory stays flat over batches, and a run killed with
SIGKILL and resumed ends complete, with every finished category unchanged."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("sustained", REPO / "benchmarks" / "sustained.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_sustained_benchmark_at_a_tiny_setting(tmp_path):
    bench = load_benchmark()
    report_path = tmp_path / "report.json"
    argv = ["--images", "90", "--chunk", "30", "--batch-size", "10", "--categories", "2", "--kills", "1"]
    argv += [
        "--n-train",
        "6",
        "--n-test",
        "8",
        "--workdir",
        str(tmp_path / "work"),
        "--json",
        str(report_path),
    ]
    status = bench.main(argv)
    report = json.loads(report_path.read_text())
    assert status == 0 and report["ok"], report
    for mode in ("model.score", "runner scorer"):
        part = report["memory"][mode]
        assert len(part["rss_trace_mib"]) == 3 and part["rss_growth_mib"] <= 64.0
        assert part["after_first_chunk"]["rss_mib"] > 0
    # Both paths score the same images the same way.
    checksums = [report["memory"][mode]["score_checksum"] for mode in ("model.score", "runner scorer")]
    assert checksums[0] == pytest.approx(checksums[1], rel=1e-5)
    kills = report["kill_resume"]
    assert kills["problems"] == [] and len(kills["kills"]) == 1
    final = json.loads((tmp_path / "work" / "killed" / "results.json").read_text())
    reference = json.loads((tmp_path / "work" / "reference" / "results.json").read_text())
    assert sorted(final["categories"]) == sorted(reference["categories"]) == ["stripes", "weave"]
    for name, entry in final["categories"].items():
        assert entry["pixel_auroc"] == reference["categories"][name]["pixel_auroc"]
