"""The public boundaries refuse input that would give silently wrong results: images on another scale,
NaN or inf in images, features or scores, features of the wrong size, out-of-range numbers."""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
import pytest
from test_baselines import BlockMeanBackbone, textured_images
from test_checkpoint import make_model, score_inputs

import subspace_jax as sj
from subspace_jax.eval import metrics
from subspace_jax.methods import patchcore, spade
from subspace_jax.methods.patchcore import PatchCoreConfig
from subspace_jax.methods.spade import SpadeConfig
from subspace_jax.methods.subspace import scorer as subspace_scorer

CONFIG = sj.Config(
    backbone="resnet18", image_size=64, levels=(2, 3), sampling_level="pooled", lam=3, k=2, sigma=1.0
)


@pytest.fixture(scope="module")
def fitted():
    return sj.fit(textured_images(5, seed=1), CONFIG, BlockMeanBackbone(), batch_size=5, progress=False)


# --- item 4: one float contract, enforced where images enter: the scale is stated, never guessed ------


def test_float_images_without_their_value_range_are_refused(fitted):
    test = textured_images(3, seed=2).astype(np.float32)
    with pytest.raises(ValueError, match=r"^images: float images need value_range=\(lo, hi\)"):
        fitted.score(test / 255.0, progress=False)
    with pytest.raises(ValueError, match=r"^images \(batch 0\): float images need value_range"):
        fitted.score(iter([test]), progress=False)
    with pytest.raises(ValueError, match="float images need value_range"):
        sj.fit(textured_images(5, seed=1) / 255.0, CONFIG, BlockMeanBackbone(), progress=False)
    with pytest.raises(ValueError, match="float images need value_range"):
        sj.calibrate(fitted, test, progress=False)


def test_float_images_on_their_stated_scale_score_like_uint8(fitted):
    test = textured_images(3, seed=2)
    maps_u8, scores_u8 = fitted.score(test, progress=False)
    maps_f, scores_f = fitted.score(test.astype(np.float32), progress=False, value_range=(0, 255))
    np.testing.assert_array_equal(maps_f, maps_u8)
    np.testing.assert_array_equal(scores_f, scores_u8)
    # [0, 1] images are mapped onto [0, 255]: the same maps up to float rounding.
    maps_unit, scores_unit = fitted.score(test / np.float32(255.0), progress=False, value_range=(0.0, 1.0))
    np.testing.assert_allclose(maps_unit, maps_u8, rtol=1e-5, atol=1e-5 * float(maps_u8.max()))
    np.testing.assert_allclose(scores_unit, scores_u8, rtol=1e-5)
    # A model fit on [0, 1] floats is the model fit on the uint8 images.
    unit = sj.fit(
        textured_images(5, seed=1) / 255.0, CONFIG, BlockMeanBackbone(), progress=False, value_range=(0, 1)
    )
    for key, bank in fitted.banks.items():
        np.testing.assert_allclose(np.asarray(unit.banks[key]), np.asarray(bank), rtol=1e-5, atol=1e-6)


def test_values_outside_the_stated_range_are_refused_naming_the_image(fitted):
    test = textured_images(3, seed=3).astype(np.float32)
    normalised = (test - 128.0) / 64.0  # mean/std normalised, then called [0, 255]
    with pytest.raises(
        ValueError, match=r"images: image 0 holds values \[-.*\] outside value_range \(0.0, 255.0\)"
    ):
        fitted.score(normalised, progress=False, value_range=(0, 255))
    brighter = test.copy()
    brighter[1] *= 4.0
    with pytest.raises(ValueError, match=r"images: image 1 holds values .* outside value_range"):
        fitted.score(brighter, progress=False, value_range=(0, 255))
    with pytest.raises(ValueError, match=r"value_range: uint8 images are on \(0, 255\)"):
        fitted.score(textured_images(2, seed=3), progress=False, value_range=(0, 1))
    for bad in [(1, 0), (0, float("inf")), (0,), "0-255"]:
        with pytest.raises(ValueError, match="value_range: expected"):
            fitted.score(test, progress=False, value_range=bad)


# --- item 5: NaN and inf are refused at fit and score, naming the image --------------------------------


def test_non_finite_images_are_refused_naming_the_image(fitted):
    test = textured_images(4, seed=4).astype(np.float32)
    test[2, 5, 7, 1] = np.nan
    with pytest.raises(ValueError, match=r"images: image 2 holds values .*NaN or inf"):
        fitted.score(test, progress=False, value_range=(0, 255))
    batches = [textured_images(2, seed=5).astype(np.float32), test[2:4]]
    with pytest.raises(ValueError, match=r"images \(batch 1\): image 2 holds values .*NaN or inf"):
        fitted.score(iter(batches), batch_size=2, progress=False, value_range=(0, 255))
    train = textured_images(5, seed=1).astype(np.float32)
    train[4, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="image 4 holds values .*NaN or inf"):
        sj.fit(train, CONFIG, BlockMeanBackbone(), progress=False, value_range=(0, 255))


def test_non_finite_features_are_refused_at_fit_and_score():
    features = {key: np.array(value) for key, value in score_inputs().items()}
    features["level3"][1, 0, 0, 0] = -np.inf
    with pytest.raises(ValueError, match=r"features\['level3'\]: image 1 holds NaN or inf"):
        make_model().score(features, progress=False)
    train = {key: np.concatenate([value] * 3) for key, value in score_inputs().items()}
    train["pooled"][5, 3] = np.nan
    with pytest.raises(ValueError, match=r"features\['pooled'\]: image 5 holds NaN or inf"):
        sj.fit_features(train, make_model().config)
    base = {
        "level1": np.ones((3, 8, 8, 2), np.float32),
        "level2": np.ones((3, 4, 4, 2), np.float32),
        "level3": np.ones((3, 2, 2, 2), np.float32),
        "pooled": np.ones((3, 4), np.float32),
    }
    base["level2"][0, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match=r"features\['level2'\]: image 0 holds NaN"):
        patchcore.fit_features(base, PatchCoreConfig(backbone="resnet18", image_size=32))
    with pytest.raises(ValueError, match=r"features\['level2'\]: image 0 holds NaN"):
        spade.fit_features(base, SpadeConfig(backbone="resnet18", image_size=32))


@pytest.mark.parametrize("bad", [np.nan, -np.inf, np.inf])
def test_metrics_refuse_non_finite_scores(bad):
    scores = np.array([0.1, 0.9, 0.5, 0.3])
    scores[1] = bad
    with pytest.raises(ValueError, match="scores contains 1 (NaN|infinite) values"):
        metrics.image_auroc(scores, np.array([0, 1, 0, 1]))
    maps = np.random.default_rng(0).random((2, 8, 8))
    maps[1, 2, 3] = bad
    masks = np.zeros((2, 8, 8), bool)
    masks[1, 2:5, 2:5] = True
    for metric in (metrics.pixel_auroc, metrics.pro, metrics.pixel_ap, metrics.f1_max):
        with pytest.raises(ValueError, match="maps contains 1 (NaN|infinite) values"):
            metric(maps, masks)


# --- item 12: numbers and sizes are validated where they enter ------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("seed", 2**70),
        ("seed", -(2**63) - 1),
        ("seed", 1.0),
        ("image_size", 2**40),
        ("lam", 2**31),
        ("k", "5"),
        ("tol", math.nan),
        ("tol", "0.1"),
        ("sigma", math.inf),
        ("sigma", math.nan),
        ("sigma", "4"),
        ("radius", -1),
        ("pixel_k", 1.5),
    ],
)
def test_config_numbers_out_of_range_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"Config.{field}: expected"):
        sj.Config(**{field: value})


def test_config_accepts_numpy_numbers_and_the_full_seed_range():
    config = sj.Config(sigma=np.float32(2.0), lam=np.int64(7), seed=2**63 - 1)
    assert config.sigma == 2.0 and type(config.lam) is int and config.lam == 7
    model = make_model()
    random = sj.fit_features(
        {key: np.concatenate([v] * 3) for key, v in score_inputs().items()},
        dataclasses.replace(model.config, sampling="random", seed=2**40),
    )
    maps, _ = random.score(score_inputs(), progress=False)
    assert np.isfinite(np.asarray(maps)).all()


@pytest.mark.parametrize("seed", [2**70, "0", True])
def test_baseline_seed_out_of_range_names_the_field(seed):
    with pytest.raises(ValueError, match="PatchCoreConfig.seed: expected"):
        PatchCoreConfig(seed=seed)


def test_features_of_the_wrong_size_name_the_argument():
    model = make_model()
    good = score_inputs()
    wrong_level = {**good, "level2": np.ones((2, 5, 4, 5), np.float32)}
    with pytest.raises(ValueError, match=r"features\['level2'\]: expected \(B, 4, 4, 5\) like the bank"):
        model.score(wrong_level, progress=False)
    wrong_pooled = {**good, "pooled": np.ones((2, 17), np.float32)}
    with pytest.raises(ValueError, match=r"features\['pooled'\]: expected 16 values per image"):
        model.score(wrong_pooled, progress=False)
    with pytest.raises(ValueError, match=r"features\['pooled'\]: expected 16 values per image"):
        jax.jit(subspace_scorer.score_features)(model, wrong_pooled)
    wrong_batch = {**good, "pooled": np.ones((3, 16), np.float32)}
    with pytest.raises(ValueError, match="features: every key needs the same batch size"):
        model.score(wrong_batch, progress=False)
    base = {f"level{i}": np.ones((3, 2 ** (4 - i), 2 ** (4 - i), 2), np.float32) for i in (1, 2, 3)}
    fitted = patchcore.fit_features(base, PatchCoreConfig(backbone="resnet18", image_size=32))
    with pytest.raises(
        ValueError, match="features: the levels' channels sum to 6 but the memory bank holds 4"
    ):
        fitted.score({**base, "level2": np.ones((3, 4, 4, 4), np.float32)}, progress=False)


@pytest.mark.parametrize("fpr_limit", ["0.3", math.nan, True, 0, 1.5, None])
def test_pro_fpr_limit_is_validated(fpr_limit):
    maps = np.random.default_rng(0).random((2, 8, 8))
    masks = np.zeros((2, 8, 8), bool)
    masks[1, 2:5, 2:5] = True
    with pytest.raises(ValueError, match="fpr_limit must be a number in"):
        metrics.pro(maps, masks, fpr_limit=fpr_limit)
    assert metrics.pro(maps, masks, fpr_limit=np.float32(0.25)) == metrics.pro(maps, masks, 0.25)
