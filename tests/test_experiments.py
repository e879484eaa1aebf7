"""The experiment runner: flags from Config fields, results files, resume, feature cache, figures, and
end-to-end runs on a tiny synthetic MVTec tree (real efficientnet_lite0 weights at 64 px)."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
from pathlib import Path
from typing import Literal

import jax.numpy as jnp
import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest

import subspace_jax as sj
from subspace_jax import backbones, configs
from subspace_jax.configs import flags as cli
from subspace_jax.data import registry as datasets
from subspace_jax.data import synthetic
from subspace_jax.data.mtd import DOWNLOAD_COMMAND, MTDNotFoundError, find_root
from subspace_jax.data.mvtec import MVTEC_CATEGORIES
from subspace_jax.engine import scorer as scoring
from subspace_jax.runner import evaluation, feature_cache, figures, main, results
from subspace_jax.runner import published as pub

# --- published numbers -----------------------------------------------------------------------------------


@pytest.mark.parametrize("table", [pub._TABLE_I, pub._TABLE_II], ids=["table_I", "table_II"])
def test_mvtec_rows_average_to_their_printed_means(table):
    # A slip of 2.5 points or more in any of the 15 values moves the row mean away from the printed one.
    # Tolerance 0.15: AE and DFR are printed as whole percents, so their means round more coarsely.
    for label, row in table.items():
        assert len(row) == len(pub.MVTEC_COLUMNS) + 1, label
        mean = float(np.mean(row[:-1]))
        if label == "STFPM":  # the paper's own inconsistency, documented in the module
            assert abs(mean - row[-1]) > 0.25
        else:
            assert abs(mean - row[-1]) <= 0.15, (label, mean, row[-1])


def test_btad_rows_average_to_their_printed_means():
    for label, rows in pub._TABLE_III.items():
        values = np.array(rows[:-1])
        assert np.abs(values.mean(axis=0) - np.array(rows[-1])).max() <= 0.1, label


def test_published_lookup_in_fractions():
    ours = pub.published("mvtec", "subspace")
    assert ours["transistor"] == {"pixel_auroc": pytest.approx(0.985), "pro": pytest.approx(0.952)}
    assert pub.published("mvtec", "patchcore")["wood"]["pro"] == pytest.approx(0.896)
    assert "pro" not in pub.published("mvtec", "riad")["bottle"]  # RIAD has no PRO row (Table II)
    assert pub.published("btad", "subspace")["03"] == {
        "pixel_auroc": pytest.approx(0.992),
        "pro": pytest.approx(0.965),
    }
    assert pub.published("mtd", "subspace") == {}  # Table IV was lost in the text copy
    assert pub.PRINTED_MEANS["mvtec"]["subspace"] == {
        "pixel_auroc": pytest.approx(0.976),
        "pro": pytest.approx(0.93),
    }
    with pytest.raises(ValueError, match="dataset"):
        pub.published("visa")


# --- flags from a Config dataclass ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ToyConfig:
    """A config in the package's style.

    Attributes:
      k: atoms per map,
        at most ``lam``.
      sigma, crop: two fields described at once.
      levels: backbone levels.

    Text after the attributes is not a description.
    """

    k: int = 5
    sigma: float = 4.0
    crop: int | None = None
    levels: tuple[int, ...] = (2, 3)
    sampling_level: int | str = 4
    sampling: Literal["subspace", "random", "none"] = "subspace"
    normalize_selection: bool = False
    name: str = "x"

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"k: expected >= 1, got {self.k}")


def _parse(argv, defaults=_ToyConfig()):
    parser = argparse.ArgumentParser()
    names = cli.add_config_flags(parser, _ToyConfig, defaults, "toy")
    return cli.config_from_namespace(defaults, parser.parse_args(argv), names)


def test_every_config_field_is_a_flag_with_its_type():
    config = _parse(
        [
            "--k",
            "3",
            "--sigma",
            "2.5",
            "--crop",
            "224",
            "--levels",
            "2",
            "3",
            "4",
            "--sampling-level",
            "pooled",
            "--sampling",
            "none",
            "--normalize-selection",
            "--name",
            "y",
        ]
    )
    assert config == _ToyConfig(
        k=3,
        sigma=2.5,
        crop=224,
        levels=(2, 3, 4),
        sampling_level="pooled",
        sampling="none",
        normalize_selection=True,
        name="y",
    )
    assert isinstance(config.levels, tuple)
    assert _parse(["--sampling-level", "3"]).sampling_level == 3  # int read before str
    assert _parse(["--crop", "none"]).crop is None


def test_flag_help_comes_from_the_attributes_docstring(capsys):
    assert cli.field_docs(_ToyConfig) == {
        "k": "atoms per map, at most lam.",
        "sigma": "two fields described at once.",
        "crop": "two fields described at once.",
        "levels": "backbone levels.",
    }
    with pytest.raises(SystemExit):
        _parse(["--help"])
    assert "atoms per map, at most lam. (default: 5)" in " ".join(capsys.readouterr().out.split())


def test_unset_flags_keep_the_given_defaults():
    defaults = _ToyConfig(k=7, levels=(2, 3, 4))
    assert _parse([], defaults) == defaults
    assert _parse(["--no-normalize-selection"], defaults) == defaults


@pytest.mark.parametrize("argv", [["--k", "three"], ["--sampling", "all"], ["--crop", "big"], ["--levels"]])
def test_malformed_flag_values_are_argparse_errors(argv, capsys):
    with pytest.raises(SystemExit):
        _parse(argv)
    assert "error" in capsys.readouterr().err


def test_config_validation_errors_surface():
    with pytest.raises(ValueError, match="k: expected"):
        _parse(["--k", "0"])


# --- results files --------------------------------------------------------------------------------------


def _entry(auroc: float) -> dict:
    return {
        "pixel_auroc": auroc,
        "pro": 0.5,
        "image_auroc": None,
        "pixel_ap": 0.25,
        "n_train": 3,
        "n_test": 4,
        "fit_seconds": 1.0,
        "score_seconds_per_image": 0.5,
        "f1_max": 0.3,
        "timings": {"fit": 1.0},
        "peak_memory": {"rss_mib": 10.0, "device_mib": None},
    }


def test_results_write_read_means_and_markdown(tmp_path):
    document = results.new_document(
        "mvtec", {"method": "subspace", "k": 3, "levels": (2, 3)}, {"command": "x"}
    )
    document["categories"]["bottle"] = _entry(0.9)
    document["categories"]["wood"] = _entry(0.7)
    results.write(tmp_path, document, "subspace")
    stored = results.read(tmp_path / "results.json")
    assert stored["config"] == {"method": "subspace", "k": 3, "levels": [2, 3]}
    assert stored["mean"]["pixel_auroc"] == pytest.approx(0.8)
    assert stored["mean"]["image_auroc"] is None  # no category has one
    assert stored["mean"]["n_test"] == 8
    text = (tmp_path / "results.md").read_text()
    # Our bottle row beside the paper's (Table I 98.6, Table II 96.1); two of the 15 categories are compared
    # with the paper's mean over the same two (wood: 95.6, 93.6).
    assert "| bottle | 90.0 | 50.0 | - | 25.0 | 30.0 | 98.6 | 96.1 |" in text
    assert "| mean of 2 | 80.0 | 50.0 | - | 25.0 | 30.0 | 97.1 | 94.8 |" in text
    # All 15 categories: beside the paper's printed means (Tables I and II: 97.6, 93.0).
    for name in MVTEC_CATEGORIES:
        document["categories"][name] = _entry(0.8)
    results.write(tmp_path, document, "subspace")
    text = (tmp_path / "results.md").read_text()
    assert "| mean | 80.0 | 50.0 | - | 25.0 | 30.0 | 97.6 | 93.0 |" in text
    # One category: its own row, no mean.
    document["categories"] = {"bottle": _entry(0.9)}
    results.write(tmp_path, document, "subspace")
    assert "| mean" not in (tmp_path / "results.md").read_text()


def test_resume_refuses_another_dataset_or_config(tmp_path):
    document = results.new_document("mvtec", {"method": "subspace", "k": 3}, {})
    path = tmp_path / "results.json"
    results.check_resumable(document, "mvtec", {"method": "subspace", "k": 3}, path)
    with pytest.raises(results.ResultsError, match=r"k: stored 3, requested 5"):
        results.check_resumable(document, "mvtec", {"method": "subspace", "k": 5}, path)
    with pytest.raises(results.ResultsError, match="dataset 'mvtec', not 'btad'"):
        results.check_resumable(document, "btad", {"method": "subspace", "k": 3}, path)


def test_reading_a_broken_results_file_names_it(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("{not json")
    with pytest.raises(results.ResultsError, match="results.json: not valid JSON"):
        results.read(path)
    path.write_text(json.dumps({"dataset": "mvtec", "config": {}, "categories": {"bottle": {"pro": 1.0}}}))
    with pytest.raises(results.ResultsError, match="'bottle' lacks pixel_auroc"):
        results.read(path)


# --- features and their cache ---------------------------------------------------------------------------


class _PoolingBackbone:
    """Stands in for a backbone: level1 is a 4x4 average pool, pooled its mean (per image, so batching
    must not change any row)."""

    name = "toy"
    weights_sha256 = "ab" * 32

    def pure(self):
        def apply(params, images):
            x = jnp.asarray(images, jnp.float32) * params
            b, h, w, c = x.shape
            level1 = x.reshape(b, h // 4, 4, w // 4, 4, c).mean(axis=(2, 4))
            return {"level1": level1, "pooled": level1.mean(axis=(1, 2))}

        return apply, 2.0


def test_extract_features_in_padded_batches_matches_one_pass():
    images = np.random.default_rng(0).integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    feats, seconds = feature_cache.features_of_images(
        _PoolingBackbone(), images, batch_size=3, progress=False
    )
    apply, params = _PoolingBackbone().pure()
    reference = apply(params, images)
    assert seconds >= 0
    for level in ("level1", "pooled"):
        assert feats[level].shape[0] == 7
        np.testing.assert_allclose(feats[level], np.asarray(reference[level]), rtol=1e-6)
    with pytest.raises(ValueError, match=r"images: expected \(N,H,W,3\)"):
        feature_cache.features_of_images(_PoolingBackbone(), images[..., 0])


# --- figures --------------------------------------------------------------------------------------------


def test_best_and_worst_are_ranked_by_per_image_pixel_auroc(tmp_path):
    rng = np.random.default_rng(1)
    masks = np.zeros((4, 16, 16), bool)
    masks[:3, 4:8, 4:8] = True  # image 3 is defect-free: not ranked
    maps = rng.random((4, 16, 16)).astype(np.float32)
    maps[0][masks[0]] += 2.0  # perfect localisation
    maps[2][masks[2]] -= 2.0  # inverted
    auroc = figures.per_image_pixel_auroc(maps, masks)
    assert auroc[0] == 1.0 and auroc[2] == 0.0 and np.isnan(auroc[3])
    assert figures.select_best_worst(auroc, 1) == ([0], [2])
    images = rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    names = [f"crack/{i:03d}.png" for i in range(4)]
    written = figures.save_best_worst(tmp_path, images, masks, maps, names, 1)
    assert [p.name for p in written] == ["best_01_crack_000.png", "worst_01_crack_002.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_saving_a_figure_leaves_pyplots_backend_and_figures_alone(tmp_path):
    before = matplotlib.get_backend()
    matplotlib.use("svg")  # stands in for a notebook's inline backend: anything but Agg
    try:
        open_figures = plt.get_fignums()
        rng = np.random.default_rng(0)
        mask = np.zeros((16, 16), bool)
        mask[4:8, 4:8] = True
        image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        path = figures.save_figure(tmp_path / "f.png", image, mask, rng.random((16, 16)), "t", 0.0, 1.0)
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert matplotlib.get_backend() == "svg" and plt.get_fignums() == open_figures
    finally:
        matplotlib.use(before)


# --- the runner end to end ------------------------------------------------------------------------------

SYNTHETIC = dataclasses.replace(
    datasets.get("mvtec"), categories=("weave", "shape")
)  # the MVTec loader, our tree
TINY = [
    "--backbone",
    "efficientnet_lite0",
    "--image-size",
    "64",
    "--k",
    "2",
    "--lam",
    "4",
    "--batch-size",
    "4",
    "--no-progress",
]


@pytest.fixture()
def tree(tmp_path):
    return synthetic.write_mvtec_tree(
        tmp_path / "tree", categories=("weave", "shape"), n_train=6, n_test=8, image_size=64, seed=0
    )


def _read(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def _check_entry(entry: dict, n_train: int, n_test: int) -> None:
    assert set(results.REQUIRED_KEYS) <= set(entry)
    for key in ("pixel_auroc", "pro", "image_auroc", "pixel_ap", "f1_max"):
        assert 0.0 <= entry[key] <= 1.0, key
    assert (entry["n_train"], entry["n_test"]) == (n_train, n_test)
    assert entry["fit_seconds"] > 0 and entry["score_seconds_per_image"] > 0
    assert {"backbone_train", "backbone_test", "sampling", "reconstruction", "maps"} <= set(entry["timings"])
    assert entry["peak_memory"]["rss_mib"] > 0


def test_corrupt_image_keeps_finished_categories_and_resume_reuses_them(tree, tmp_path, capsys):
    out, cache = tmp_path / "out", tmp_path / "cache"
    corrupt = tree / "shape" / "test" / "blob" / "000.png"
    original = corrupt.read_bytes()
    corrupt.write_bytes(b"this is not a PNG")
    argv = [
        "--data-root",
        str(tree),
        "--out",
        str(out),
        "--feature-cache",
        str(cache),
        "--save-maps",
        "1",
        *TINY,
    ]

    assert main(SYNTHETIC, argv) == 1
    err = capsys.readouterr().err
    assert "'shape' failed" in err and str(corrupt) in err and "--resume" in err
    first = _read(out)
    assert list(first["categories"]) == ["weave"]
    weave = first["categories"]["weave"]
    _check_entry(weave, n_train=6, n_test=8)
    assert weave["pixel_auroc"] > 0.8  # the synthetic defects are plain to see; a broken map would not be
    assert first["config"]["k"] == 2 and first["config"]["backbone"] == "efficientnet_lite0"
    figures_written = sorted((out / "figures" / "weave").iterdir())
    assert [p.name.split("_")[0] for p in figures_written] == ["best", "worst"]

    corrupt.write_bytes(original)
    assert main(SYNTHETIC, [*argv, "--resume"]) == 0
    printed = capsys.readouterr().out
    assert "skipping finished categories weave" in printed
    second = _read(out)
    assert second["categories"]["weave"] == weave  # reused as stored, not recomputed
    _check_entry(second["categories"]["shape"], n_train=6, n_test=8)
    assert second["mean"]["pixel_auroc"] == pytest.approx(
        (weave["pixel_auroc"] + second["categories"]["shape"]["pixel_auroc"]) / 2
    )
    markdown = (out / "results.md").read_text()
    assert "| weave |" in markdown and "| shape |" in markdown and "| mean of 2 |" in markdown

    # Another configuration may not be mixed into this folder, nor may a run overwrite it.
    assert main(SYNTHETIC, [*argv, "--resume", "--k", "3"]) == 2
    assert "k: stored 2, requested 3" in capsys.readouterr().err
    assert main(SYNTHETIC, argv) == 2
    assert "already holds results" in capsys.readouterr().err

    # The cache written by the first run gives the same numbers without the backbone.
    assert (
        main(SYNTHETIC, [*argv[:2], "--out", str(tmp_path / "again"), *argv[4:], "--categories", "weave"])
        == 0
    )
    again = _read(tmp_path / "again")["categories"]["weave"]
    assert again["features_cached"] == {"train": True, "test": True}
    for key in ("pixel_auroc", "pro", "image_auroc", "pixel_ap"):
        assert again[key] == pytest.approx(weave[key], abs=1e-6)


def test_feature_cache_follows_the_image_bytes_not_their_names(tree, tmp_path):
    metric_keys = ("pixel_auroc", "pro", "image_auroc", "pixel_ap", "f1_max")
    base = ["--data-root", str(tree), "--categories", "weave", *TINY]
    cached = [*base, "--feature-cache", str(tmp_path / "cache")]
    assert main(SYNTHETIC, [*cached, "--out", str(tmp_path / "first")]) == 0
    first = _read(tmp_path / "first")["categories"]["weave"]
    assert first["features_cached"] == {"train": False, "test": False} and first["pixel_auroc"] > 0.8
    assert backbones.load_cached("efficientnet_lite0").features_version == backbones.features_version(
        backbones.REGISTRY["efficientnet_lite0"]
    )

    # Every defective test image becomes a defect-free training image under its own name: the masks now
    # mark defects that are not there, so the true metrics fall.
    good = sorted((tree / "weave" / "train" / "good").iterdir())
    defective = sorted(p for p in (tree / "weave" / "test").rglob("*.png") if p.parent.name != "good")
    assert defective
    for i, path in enumerate(defective):
        path.write_bytes(good[i % len(good)].read_bytes())
    assert main(SYNTHETIC, [*cached, "--out", str(tmp_path / "second")]) == 0
    second = _read(tmp_path / "second")["categories"]["weave"]
    assert second["features_cached"] == {"train": True, "test": False}  # the test images changed
    assert second["pixel_auroc"] < first["pixel_auroc"] - 0.2
    assert main(SYNTHETIC, [*base, "--out", str(tmp_path / "uncached")]) == 0
    uncached = _read(tmp_path / "uncached")["categories"]["weave"]
    for key in metric_keys:
        assert second[key] == pytest.approx(uncached[key], abs=1e-6), key


@pytest.mark.parametrize("method, own_field", [("patchcore", "coreset_ratio"), ("spade", "top_k_images")])
def test_baseline_method_writes_the_same_schema(tree, tmp_path, method, own_field):
    out = tmp_path / method
    argv = [
        "--data-root",
        str(tree),
        "--out",
        str(out),
        "--categories",
        "weave",
        "--method",
        method,
        "--backbone",
        "efficientnet_lite0",
        "--image-size",
        "64",
        "--batch-size",
        "4",
        "--no-progress",
    ]
    assert main(SYNTHETIC, argv) == 0
    document = _read(out)
    assert document["config"]["method"] == method and own_field in document["config"]
    entry = document["categories"]["weave"]
    assert set(results.REQUIRED_KEYS) <= set(entry) and {"matching", "maps"} <= set(entry["timings"])
    assert 0.5 < entry["pixel_auroc"] <= 1.0


def test_missing_backbone_weights_stop_before_any_work(tree, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--data-root", str(tree), "--out", str(out), "--weights", str(tmp_path / "absent.pth")]
    assert main(SYNTHETIC, argv) == 2
    err = capsys.readouterr().err
    assert "wide_resnet50_2" in err and "absent.pth" in err and "--backbone efficientnet_lite0" in err
    assert not out.exists()


def test_data_root_comes_from_the_environment(tree, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("SUBSPACE_JAX_MVTEC", raising=False)
    with pytest.raises(SystemExit):
        main(SYNTHETIC, ["--out", str(tmp_path / "x")])
    assert "SUBSPACE_JAX_MVTEC is not set" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(SYNTHETIC, ["--data-root", str(tree), "--categories", "bottle"])
    assert "unknown ['bottle']" in capsys.readouterr().err


def test_data_root_falls_back_to_the_datasets_own_search(tree, tmp_path, monkeypatch, capsys):
    """MTD's runner finds the data where the tests do (env, ../shared/data/mtd, download cache)."""
    assert datasets.get("mtd").find_root is not None and datasets.get("mvtec").find_root is None
    monkeypatch.delenv("SUBSPACE_JAX_MVTEC", raising=False)
    found = dataclasses.replace(SYNTHETIC, find_root=lambda: tree)
    with pytest.raises(SystemExit):  # past the data root: stops at the category check, before any work
        main(found, ["--out", str(tmp_path / "x"), "--categories", "bottle"])
    assert "unknown ['bottle']" in capsys.readouterr().err

    def nowhere():
        raise MTDNotFoundError(f"MTD not found; get it with `{DOWNLOAD_COMMAND}`")

    with pytest.raises(SystemExit):
        main(dataclasses.replace(SYNTHETIC, find_root=nowhere), ["--out", str(tmp_path / "x")])
    assert f"--data-root: not given, and MTD not found; get it with `{DOWNLOAD_COMMAND}`" in (
        capsys.readouterr().err
    )
    monkeypatch.setenv("SUBSPACE_JAX_MTD", str(tree))  # not an MTD folder: find_root's own error
    with pytest.raises(MTDNotFoundError):
        find_root()
    assert not (tmp_path / "x").exists()


def test_mtd_defaults_are_the_papers_mtd_setting_and_every_field_is_a_flag(capsys):
    method = evaluation.resolve_method("subspace")
    config = evaluation.default_config(method, "mtd")
    assert config.levels == (2, 3, 4) and config.sampling_level == "pooled"
    assert evaluation.default_config(method, "mvtec") == method.config_cls()
    with pytest.raises(SystemExit):
        main("mtd", ["--method", "subspace", "--help"])
    help_text = capsys.readouterr().out
    for field in dataclasses.fields(method.config_cls):
        assert cli.flag_name(field.name) in help_text
    assert "SUBSPACE_JAX_MTD" in help_text and "--categories" not in help_text


def test_mtd_runs_the_packaged_fusion_without_method_or_config_and_other_datasets_the_subspace_method(capsys):
    # Issue 22: the fusion beat PatchCore on half A of MTD on all four metrics, so it is MTD's default.
    assert evaluation.default_method("mtd").name == "fusion"
    assert evaluation.default_config("fusion", "mtd") == configs.load("mtd_fusion")
    for dataset in ("mvtec", "btad", None):
        assert evaluation.default_method(dataset).name == "subspace"
    with pytest.raises(SystemExit):
        main("mtd", ["--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert "default here: fusion" in help_text and "--map-weights" in help_text and "--lam" not in help_text


def test_staged_scoring_equals_the_models_fused_scorer():
    rng = np.random.default_rng(0)

    def feats(n):
        return {
            "level2": rng.random((n, 8, 8, 4), np.float32),
            "level3": rng.random((n, 4, 4, 6), np.float32),
            "pooled": rng.random((n, 6), np.float32),
        }

    config = sj.Config(
        backbone="efficientnet_lite0", image_size=32, levels=(2, 3), sampling_level="pooled", lam=4, k=2
    )
    fitted = sj.fit_features(feats(7), config)
    test = feats(3)
    timings: dict = {}
    maps, scores = scoring.score_in_batches(fitted, test, batch_size=2, timings=timings, progress=False)
    ref_maps, ref_scores = sj.score_features(fitted, test)
    np.testing.assert_allclose(np.asarray(maps), np.asarray(ref_maps), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scores), np.asarray(ref_scores), rtol=1e-5, atol=1e-5)
    assert set(timings) == {"input", "sampling", "reconstruction", "maps"}  # host features are moved once


def test_demo_runs_and_writes_its_figures(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location(
        "demo", Path(__file__).resolve().parents[1] / "experiments/demo.py"
    )
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert (
        demo.main(
            [
                "--out",
                str(tmp_path),
                "--categories",
                "shape",
                "--image-size",
                "64",
                "--n-train",
                "8",
                "--n-test",
                "8",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    row = next(line for line in printed.splitlines() if line.startswith("shape"))
    assert 50.0 < float(row.split()[1]) <= 100.0  # pixel AUROC in %
    pngs = sorted(p.name for p in (tmp_path / "shape").iterdir())
    assert len(pngs) == 2 and pngs[0].startswith("best_01_") and pngs[1].startswith("worst_01_")
    assert all(str(tmp_path / "shape" / name) in printed for name in pngs)
