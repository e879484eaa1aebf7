"""The procedural synthetic dataset: contents, exact masks, seeding, speed and the MVTec folder layout."""

from __future__ import annotations

import itertools
import json
import time

import numpy as np
import pytest
from PIL import Image

from subspace_jax.data import synthetic
from subspace_jax.data.split import Split


@pytest.fixture(scope="module")
def splits() -> dict[str, tuple[Split, Split]]:
    return {
        c: synthetic.generate(c, n_train=6, n_test=10, image_size=64, seed=3) for c in synthetic.CATEGORIES
    }


def test_categories_cover_textures_and_objects():
    assert len(synthetic.TEXTURE_CATEGORIES) >= 2 and len(synthetic.OBJECT_CATEGORIES) >= 2
    assert set(synthetic.CATEGORIES) == set(synthetic.TEXTURE_CATEGORIES) | set(synthetic.OBJECT_CATEGORIES)
    assert synthetic.DEFECT_TYPES == ("blob", "color_spot", "missing", "scratch")


@pytest.mark.parametrize("category", synthetic.CATEGORIES)
def test_splits_have_the_split_contract(splits, category):
    train, test = splits[category]
    assert train.images.shape == (6, 64, 64, 3) and train.images.dtype == np.uint8
    assert train.masks.shape == (6, 64, 64) and train.masks.dtype == bool and not train.masks.any()
    assert train.labels.dtype == np.int64 and not train.labels.any()
    assert train.defect_types == ("good",) * 6 and train.paths == (None,) * 6

    assert test.images.shape == (10, 64, 64, 3) and test.masks.shape == (10, 64, 64)
    # Half good first, then the defective ones grouped by type in DEFECT_TYPES order.
    assert test.defect_types == ("good",) * 5 + ("blob", "blob", "color_spot", "missing", "scratch")
    assert test.labels.tolist() == [0] * 5 + [1] * 5
    assert test.paths == (None,) * 10
    pixels_per_mask = test.masks.sum(axis=(1, 2))
    assert np.all(pixels_per_mask[:5] == 0)
    # Every defect is a real region, yet small against the image (a localisation task).
    assert np.all((pixels_per_mask[5:] >= 8) & (pixels_per_mask[5:] < 0.15 * 64 * 64))


def test_odd_and_tiny_test_sizes():
    _, test = synthetic.generate("grain", n_train=1, n_test=1, image_size=32)
    assert test.defect_types == ("blob",) and test.labels.tolist() == [1]
    _, test = synthetic.generate("grain", n_train=1, n_test=0, image_size=32)
    assert (
        test.images.shape == (0, 32, 32, 3) and test.masks.shape == (0, 32, 32) and test.labels.shape == (0,)
    )


@pytest.mark.parametrize("category", synthetic.CATEGORIES)
@pytest.mark.parametrize("size", [32, 96])
def test_masks_are_exactly_the_pixels_each_defect_changes(category, size):
    for index, defect in enumerate(synthetic.DEFECT_TYPES):
        rng = np.random.default_rng([index, size])
        clean = synthetic._RENDERERS[category](rng, size)
        image, mask = synthetic._apply_defect(rng, clean, defect)
        changed = np.any(np.abs(image - clean.image) > 1e-6, axis=-1)
        assert np.array_equal(changed, mask), (category, defect)
        assert not np.any(mask & ~clean.material)
        # Visible: on average the defect moves a pixel by well over the sensor noise (0.015).
        assert np.abs(image - clean.image)[mask].max(axis=-1).mean() > 0.08, (category, defect)


@pytest.mark.parametrize("category", synthetic.CATEGORIES)
def test_nominal_images_vary_beyond_sensor_noise(category):
    rng = np.random.default_rng(0)
    renders = [synthetic._RENDERERS[category](rng, 64).image for _ in range(3)]
    for a, b in itertools.combinations(renders, 2):
        assert np.abs(a - b).mean() > 0.01


def test_same_seed_same_arrays_and_other_seed_other_arrays():
    train_a, test_a = synthetic.generate("shape", 3, 4, 48, seed=5)
    train_b, test_b = synthetic.generate("shape", 3, 4, 48, seed=5)
    train_c, test_c = synthetic.generate("shape", 3, 4, 48, seed=6)
    for a, b in [(train_a, train_b), (test_a, test_b)]:
        np.testing.assert_array_equal(a.images, b.images)
        np.testing.assert_array_equal(a.masks, b.masks)
    assert not np.array_equal(train_a.images, train_c.images)
    assert not np.array_equal(test_a.masks, test_c.masks)


def test_an_image_does_not_depend_on_how_many_are_generated():
    small_train, small_test = synthetic.generate("ring", 2, 4, 48, seed=1)
    large_train, large_test = synthetic.generate("ring", 5, 4, 48, seed=1)
    np.testing.assert_array_equal(small_train.images, large_train.images[:2])
    np.testing.assert_array_equal(small_test.images, large_test.images)


def test_train_and_test_images_differ(splits):
    train, test = splits["weave"]
    assert not any(np.array_equal(a, b) for a in train.images for b in test.images)


def test_categories_look_different(splits):
    mean_colours = {c: splits[c][0].images.reshape(-1, 3).mean(axis=0) for c in synthetic.CATEGORIES}
    for a, b in itertools.combinations(synthetic.CATEGORIES, 2):
        assert np.abs(mean_colours[a] - mean_colours[b]).max() > 15, (a, b)


def test_generation_is_fast():
    synthetic.generate("grain", 1, 1, 128)  # warm up imports and caches
    start = time.process_time()
    for category in synthetic.CATEGORIES:
        synthetic.generate(category, n_train=20, n_test=20, image_size=128, seed=0)
    per_category = (time.process_time() - start) / len(synthetic.CATEGORIES)
    assert per_category < 1.0, f"{per_category:.2f} s of CPU per category for 20 + 20 images at 128 px"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(category="carpet"), "category must be one of"),
        (dict(n_train=0), "n_train must be a positive integer"),
        (dict(n_test=-1), "n_test must be a non-negative integer"),
        (dict(image_size=16), "image_size must be an integer >= 32"),
        (dict(seed=-1), "seed must be a non-negative integer"),
    ],
)
def test_bad_arguments_are_errors(kwargs, message):
    arguments = dict(category="weave", n_train=2, n_test=2, image_size=32, seed=0) | kwargs
    with pytest.raises(ValueError, match=message):
        synthetic.generate(**arguments)


def test_write_mvtec_tree_layout_and_round_trip(tmp_path):
    root = synthetic.write_mvtec_tree(
        tmp_path / "synth", ("stripes", "ring"), n_train=3, n_test=6, image_size=40, seed=2
    )
    assert root == tmp_path / "synth"
    for category in ("stripes", "ring"):
        train, test = synthetic.generate(category, 3, 6, 40, seed=2)
        base = root / category
        assert sorted(p.name for p in (base / "train" / "good").iterdir()) == [
            "000.png",
            "001.png",
            "002.png",
        ]
        assert sorted(p.name for p in (base / "test").iterdir()) == ["blob", "color_spot", "good", "missing"]
        assert sorted(p.name for p in (base / "ground_truth").iterdir()) == ["blob", "color_spot", "missing"]
        assert sorted(p.name for p in (base / "test" / "good").iterdir()) == ["000.png", "001.png", "002.png"]
        np.testing.assert_array_equal(
            np.asarray(Image.open(base / "train" / "good" / "001.png")), train.images[1]
        )
        # Test order of generate(): good 0..2, blob, color_spot, missing; numbering restarts per type.
        np.testing.assert_array_equal(
            np.asarray(Image.open(base / "test" / "good" / "002.png")), test.images[2]
        )
        np.testing.assert_array_equal(
            np.asarray(Image.open(base / "test" / "missing" / "000.png")), test.images[5]
        )
        mask = np.asarray(Image.open(base / "ground_truth" / "missing" / "000_mask.png"))
        assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 255}
        np.testing.assert_array_equal(mask == 255, test.masks[5])
        provenance = json.loads((base / synthetic.MARKER_FILE).read_text())
        assert provenance["seed"] == 2 and provenance["category"] == category


def test_write_mvtec_tree_replaces_its_own_output_but_not_foreign_folders(tmp_path):
    synthetic.write_mvtec_tree(tmp_path, ("shape",), n_train=2, n_test=2, image_size=32, seed=0)
    synthetic.write_mvtec_tree(tmp_path, ("shape",), n_train=1, n_test=2, image_size=32, seed=1)
    assert [p.name for p in (tmp_path / "shape" / "train" / "good").iterdir()] == ["000.png"]

    (tmp_path / "weave").mkdir()
    (tmp_path / "weave" / "precious.png").write_bytes(b"not ours")
    with pytest.raises(FileExistsError, match="weave exists and was not written by write_mvtec_tree"):
        synthetic.write_mvtec_tree(tmp_path, ("weave",), n_train=1, n_test=2, image_size=32)
    assert (tmp_path / "weave" / "precious.png").read_bytes() == b"not ours"


def test_write_mvtec_tree_checks_all_categories_before_writing(tmp_path):
    with pytest.raises(ValueError, match="category must be one of"):
        synthetic.write_mvtec_tree(tmp_path, ("weave", "nope"), n_train=1, n_test=2, image_size=32)
    assert not (tmp_path / "weave").exists()
