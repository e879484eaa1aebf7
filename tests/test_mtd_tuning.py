"""experiments/mtd_tuning.py (issue 14): the image-score names of the recorded rows, the
table of the recorded rows against the results document, the frontier figure, and on real MTD (an evenly
spaced subset) the ``config`` and ``options`` commands against each other and against plain counts."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from subspace_jax import configs
from subspace_jax.data.mtd import MTD
from subspace_jax.runner.workbench import evenly_spaced

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "experiments" / "mtd_tuning.py"
RECORDED = REPO / "docs" / "results" / "mtd_tuning_efficientnet_lite0"


@pytest.fixture(scope="module")
def tuning():
    spec = importlib.util.spec_from_file_location("mtd_tuning_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        del sys.modules[spec.name]


def test_score_names_are_those_of_the_recorded_rows(tuning):
    assert tuning.score_name(configs.load("mtd_paper")) == "max"
    assert tuning.score_name(configs.load("mtd_default")) == "top1%"
    assert tuning.score_name(configs.load("mtd_paper", score_fraction=0.001)) == "top0.1%"
    assert tuning.score_name(configs.load("mtd_patchcore")) == "max"  # no top-fraction score
    recorded = {r["score"] for r in tuning.read_rows(sorted(RECORDED.glob("optionsA*.jsonl")))}
    assert {"max", "top0.1%", "top1%"} <= recorded


def _row(variant, fusion, score, image, pro=70.0, ap=20.0, bank=4e8):
    return {
        "variant": variant,
        "fusion": fusion,
        "score": score,
        "pixel_auroc": 80.0,
        "pro": pro,
        "image_auroc": image,
        "pixel_ap": ap,
        "bank_bytes": bank,
    }


def test_table_has_one_line_per_variant_and_fusion_with_each_score_in_a_column(tuning):
    rows = [
        _row("a", "none", "max", 90.0),
        _row("a", "none", "top1%", 91.5),
        _row("b", "none", "top1%", 92.25, bank=4.2e7),
        _row("a", "none", "max", 10.0),  # a repeated (variant, fusion, score) keeps its first value
    ]
    assert tuning.markdown_table(rows).splitlines() == [
        "| bank variant | fusion | pixel AUROC | PRO | pixel AP | image AUROC: max / top1% | bank MB |",
        "|---|---|---:|---:|---:|---|---:|",
        "| a | none | 80.00 | 70.00 | 20.00 | 90.00 / 91.50 | 400.0 |",
        "| b | none | 80.00 | 70.00 | 20.00 | - / 92.25 | 42.0 |",
    ]


def test_table_of_the_recorded_rows_is_the_results_documents_table(tuning):
    lines = tuning.markdown_table(tuning.read_rows(sorted(RECORDED.glob("optionsA*.jsonl")))).splitlines()
    document = (RECORDED.parent / "mtd_tuning_efficientnet_lite0.md").read_text().splitlines()
    assert len(lines) > 100
    assert [line for line in lines if line not in document] == []


def test_frontier_figure_writes_a_png_and_nothing_on_bad_rows(tuning, tmp_path):
    rows = [_row("a", "none", s, 90.0) for s in ("max", "top1%")] + [_row("b", "x", "max", 90.0, 76, 28, 4e7)]
    reference = {"name": "PatchCore", "pro": 74.0, "pixel_ap": 30.0}
    out = tuning.frontier_figure(rows, reference, tmp_path / "f.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    del rows[-1]["pro"]
    with pytest.raises(KeyError):
        tuning.frontier_figure(rows, reference, tmp_path / "g.png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]


def _pairwise_auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(a defective image scores above a defect-free one), ties counting one half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    return float(
        ((pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()) / pos.size / neg.size
    )


@pytest.mark.mtd
def test_options_on_half_a_give_the_config_reports_a_row(tuning, mtd_root, tmp_path):
    common = ["--data-root", str(mtd_root), "--feature-cache", str(tmp_path / "cache"), "--limit", "32"]
    assert tuning.main(["config", "mtd_paper", "--out", str(tmp_path / "out"), *common]) == 0
    report = json.loads((tmp_path / "out" / "mtd_paper_report.json").read_text())
    info = json.loads((tmp_path / "out" / "mtd_paper.json").read_text())
    assert info["config"]["backbone"] == "efficientnet_lite0" and info["config"]["levels"] == [2, 3, 4]
    maps = np.load(tmp_path / "out" / "mtd_paper_maps.npy")
    scores = np.load(tmp_path / "out" / "mtd_paper_scores.npy")
    assert maps.shape == (32, 256, 256) and scores.shape == (32,)
    samples = evenly_spaced(MTD(mtd_root).samples("test"), 32)  # 2 or more of every defect type
    labels = np.array([s.label for s in samples])
    np.testing.assert_array_equal(scores, maps.max(axis=(1, 2)))  # mtd_paper: the map's maximum
    assert report["full/all"]["image_auroc"] == round(100 * _pairwise_auroc(scores, labels), 2)
    assert {"full/all", "A/all", "B/all"} <= set(report)

    rows = tmp_path / "rows.jsonl"
    argv = ["options", "mtd_paper", "--jsonl", str(rows), "--set", "", "--set", "k=3,lam=10", *common]
    assert tuning.main(argv) == 0
    first, second = (json.loads(line) for line in rows.read_text().splitlines())
    assert first["variant"] == "mtd_paper" and second["variant"] == "mtd_paper k=3,lam=10"
    assert first["half"] == "A" and first["score"] == "max"
    assert {k: first[k] for k in report["A/all"]} == report["A/all"]
    assert first["bank_bytes"] == info["bank_bytes"] > 0
    assert second["pro"] != first["pro"] or second["pixel_auroc"] != first["pixel_auroc"]
