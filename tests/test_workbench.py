"""runner.workbench (splits, cached features) on a synthetic tree, and compare_mtd.py on MTD."""

from __future__ import annotations

import gc
import importlib.util
import json
import weakref
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from subspace_jax import backbones, configs
from subspace_jax.data import MTD, MVTecAD, synthetic
from subspace_jax.data import registry as datasets
from subspace_jax.runner import evaluation, workbench
from subspace_jax.runner.command import method_and_defaults

REPO = Path(__file__).resolve().parents[1]


def test_evenly_spaced_keeps_both_ends_and_order():
    items = list(range(10))
    assert workbench.evenly_spaced(items, 4) == [0, 3, 6, 9]
    assert workbench.evenly_spaced(items, None) == items
    assert workbench.evenly_spaced(items, 50) == items
    with pytest.raises(ValueError, match="limit"):
        workbench.evenly_spaced(items, 0)


class _MeanPoolBackbone:
    """A stand-in backbone: level1 is an 8x8 mean pool, pooled its mean; no weights to load."""

    name, weights_sha256, features_version = "toy", "ab" * 32, "test.1"

    def pure(self):
        def apply(params, images):
            x = jnp.asarray(images, jnp.float32)
            b, h, w, c = x.shape
            level1 = x.reshape(b, h // 8, 8, w // 8, 8, c).mean(axis=(2, 4))
            return {"level1": level1, "pooled": level1.mean(axis=(1, 2))}

        return apply, None


@pytest.fixture()
def synthetic_category(tmp_path):
    root = synthetic.write_mvtec_tree(tmp_path / "tree", ("weave",), n_train=3, n_test=4, image_size=32)
    return MVTecAD(root, "weave")


def test_loaded_splits_are_kept_per_workbench_and_freed_with_it(synthetic_category):
    bench = workbench.Workbench(
        synthetic_category, "syn", None, cache_dir=None, image_size=32, progress=False
    )
    test = bench.split("test")
    assert bench.split("test") is test  # loaded once
    other = workbench.Workbench(
        synthetic_category, "syn", None, cache_dir=None, image_size=32, progress=False
    )
    assert other.split("test") is not test  # per workbench, not per process
    bench.forget("test")
    reloaded = bench.split("test")
    assert reloaded is not test
    np.testing.assert_array_equal(reloaded.images, test.images)
    refs = [weakref.ref(x) for x in (bench, test, test.images, reloaded.images)]
    del bench, test, reloaded
    gc.collect()
    assert [ref() for ref in refs] == [None] * 4


def test_features_go_through_the_cache_without_keeping_the_images(synthetic_category, tmp_path):
    cache = tmp_path / "cache"
    bench = workbench.Workbench(
        synthetic_category, "syn", _MeanPoolBackbone(), cache_dir=cache, image_size=32, progress=False
    )
    computed = bench.features("train")
    assert computed["level1"].shape == (3, 4, 4, 3) and "train" not in bench._splits
    again = workbench.Workbench(
        synthetic_category, "syn", _MeanPoolBackbone(), cache_dir=cache, image_size=32, progress=False
    )
    cached = again.features("train")
    assert not cached["level1"].flags.writeable  # memory-mapped from the cache, not computed again
    np.testing.assert_array_equal(cached["level1"], computed["level1"])
    assert again.backbone_seconds["train"] == bench.backbone_seconds["train"]
    reference = again.split("train").images.astype(np.float32).reshape(3, 4, 8, 4, 8, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(cached["level1"], reference, rtol=1e-6)


@pytest.mark.mtd
def test_subset_features_are_cached_apart_from_the_full_split(mtd_root, tmp_path):
    backbone = backbones.load_cached("efficientnet_lite0")
    bench = workbench.Workbench(
        MTD(mtd_root), "mtd", backbone, cache_dir=tmp_path, image_size=64, limits={"train": 3}, progress=False
    )
    first = bench.features("train")
    assert first["level2"].shape == (3, 8, 8, 40) and first["pooled"].shape == (3, 1280)
    entries = list(tmp_path.rglob("meta.json"))
    assert len(entries) == 1 and "mtd-3" in entries[0].parts  # never the full split's entry
    # A second bench reads the cache (same arrays) without the backbone.
    again = workbench.Workbench(
        MTD(mtd_root), "mtd", backbone, cache_dir=tmp_path, image_size=64, limits={"train": 3}, progress=False
    )
    cached = again.features("train")
    np.testing.assert_array_equal(cached["level3"], first["level3"])
    assert again.backbone_seconds["train"] == bench.backbone_seconds["train"]


@pytest.mark.mtd
def test_compare_mtd_writes_the_table_and_keeps_the_notes(mtd_root, tmp_path):
    spec = importlib.util.spec_from_file_location("compare_mtd", REPO / "experiments" / "compare_mtd.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    out = tmp_path / "table.md"
    out.write_text("old table" + compare.NOTES_HEADING + "hand-written notes\n")
    args = [
        "--data-root",
        str(mtd_root),
        "--image-size",
        "64",
        "--limit-train",
        "6",
        "--limit-test",
        "8",
        "--feature-cache",
        str(tmp_path / "cache"),
        "--out",
        str(out),
        "--no-progress",
        "--batch-size",
        "4",
        "--rows",
        "subspace (image atoms)",
        "PatchCore",
    ]
    assert compare.main(args) == 0
    text = out.read_text()
    assert "old table" not in text and text.endswith(compare.NOTES_HEADING + "hand-written notes\n")
    assert "| subspace (image atoms) |" in text and "| PatchCore |" in text and "SPADE |" not in text
    record = json.loads(out.with_suffix(".json").read_text())
    rows = {row["label"]: row for row in record["rows"]}
    assert set(rows) == {"subspace (image atoms)", "PatchCore"}
    for row in rows.values():
        assert row["n_train"] == 6 and row["n_test"] == 8
        assert all(0.0 <= row[key] <= 1.0 for key in ("pixel_auroc", "pro", "image_auroc", "pixel_ap"))
        assert row["bank_bytes"] > 0 and row["seconds_per_image"] > row["backbone_seconds_per_image"]
    # Subspace bank: per-level float32 banks, (N, N) Gram matrices and the pooled sampling bank, counted
    # exactly.
    sub = rows["subspace (image atoms)"]
    cells = {2: 8 * 8 * 40, 3: 4 * 4 * 112, 4: 2 * 2 * 1280}
    expected = 4 * (6 * sum(cells.values()) + 3 * 6 * 6 + 6 * 1280 + 6 * 6)
    assert sub["bank_bytes"] == expected
    assert rows["PatchCore"]["config"]["coreset_ratio"] == 0.01


def test_default_config_starts_from_a_named_config_file():
    paper = configs.load(configs.CONFIG_DIR / "mtd_paper.py")
    assert configs.load("mtd_paper") == paper
    tweaked = configs.load("mtd_paper", levels=(2, 3))
    assert tweaked.levels == (2, 3) and tweaked.sampling_level == paper.sampling_level
    runner_default = configs.load(configs.CONFIG_DIR / "mtd_default.py")
    assert evaluation.default_config("subspace", "mtd") == runner_default
    assert evaluation.default_config("subspace", "mtd", k=3) == configs.load("mtd_default", k=3)
    # A config names its method: asking for another one with it is refused, naming both.
    mtd = datasets.get("mtd")
    method, config = method_and_defaults(mtd, ["--config", "mtd_paper"])
    assert method.name == "subspace" and config == paper
    with pytest.raises(ValueError, match="--config mtd_paper holds a subspace config"):
        method_and_defaults(mtd, ["--config", "mtd_paper", "--method", "patchcore"])
