"""Thresholds from nominal images: the order-statistic rule, its false-alarm guarantee, storage, predict."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

import subspace_jax as sj
from subspace_jax import backbones
from subspace_jax.data import synthetic
from subspace_jax.eval import calibration
from subspace_jax.serving import checkpoint

SIZE = 64


def test_threshold_is_the_conformal_order_statistic():
    values = np.random.default_rng(0).permutation(np.arange(1.0, 100.0))  # 1..99, n = 99
    # k = ceil((1 - 0.1) * 100) = 90 -> the 90th smallest value, 90.0
    assert calibration.order_statistic_threshold(values, 0.1) == 90.0
    # k = ceil(0.95 * 100) = 95
    assert calibration.order_statistic_threshold(values, 0.05) == 95.0
    with pytest.warns(UserWarning, match="cannot resolve"):
        assert calibration.order_statistic_threshold(values, 0.001) == 99.0
    with pytest.raises(ValueError, match="false_alarm_rate"):
        calibration.order_statistic_threshold(values, 1.5)


def test_false_alarm_rate_on_fresh_nominal_scores_is_within_binomial_error():
    """Calibrate on n nominal scores, count alarms on fresh nominal scores from the same law."""
    rng = np.random.default_rng(1)
    for rate in (0.01, 0.05):
        n_cal, n_fresh = 4000, 40000
        threshold = calibration.order_statistic_threshold(rng.gamma(3.0, 2.0, n_cal), rate)
        achieved = float(np.mean(rng.gamma(3.0, 2.0, n_fresh) > threshold))
        # The achieved rate varies with the calibration draw (Beta, variance ~ r(1-r)/n_cal) and with the
        # fresh sample (binomial, r(1-r)/n_fresh).
        sd = math.sqrt(rate * (1 - rate) * (1 / n_cal + 1 / n_fresh))
        assert abs(achieved - rate) < 4 * sd, (rate, achieved, sd)


def test_expected_false_alarm_rate_matches_the_conformal_formula():
    """Uniform nominal scores: the false-alarm rate of threshold t is exactly 1 - t; its mean over
    calibration draws is (n + 1 - k)/(n + 1) <= r."""
    rng = np.random.default_rng(2)
    n, rate = 49, 0.1
    k = math.ceil((1 - rate) * (n + 1))
    rates = [1.0 - calibration.order_statistic_threshold(rng.uniform(size=n), rate) for _ in range(4000)]
    expected = (n + 1 - k) / (n + 1)
    assert expected <= rate
    sd = math.sqrt(expected * (1 - expected) / (n + 2) / len(rates))  # Beta variance / repetitions
    assert abs(np.mean(rates) - expected) < 4 * sd


def test_normalize_puts_the_threshold_at_one_half():
    norm = calibration.normalize(np.array([0.0, 2.0, 4.0, 8.0, 100.0]), 4.0)
    np.testing.assert_allclose(norm, [0.0, 0.25, 0.5, 1.0, 1.0])


def test_at_rate_recomputes_image_threshold_and_interpolates_pixels():
    rng = np.random.default_rng(3)
    scores, maps = rng.gamma(2.0, 1.0, 300), rng.gamma(2.0, 1.0, (300, 16, 16)).astype(np.float32)
    thresholds = calibration.thresholds_from_scores(scores, maps, 0.01)
    other = thresholds.at_rate(0.05)
    assert other.image == calibration.order_statistic_threshold(scores, 0.05)
    exact_pixel = calibration.order_statistic_threshold(maps, 0.05)
    assert abs(other.pixel - exact_pixel) < 0.02 * exact_pixel  # a 97-point log table, interpolated
    assert thresholds.pixel == calibration.order_statistic_threshold(maps, 0.01)
    assert calibration.Thresholds.from_dict(json.loads(json.dumps(thresholds.to_dict()))) == thresholds


@pytest.fixture(scope="module")
def calibrated():
    train, test = synthetic.generate("shape", 20, 8, SIZE, 0)
    config = sj.Config(backbone="efficientnet_lite0", image_size=SIZE, lam=8, k=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # 5 validation images cannot resolve r = 0.01
        model = sj.fit(
            train.images,
            config,
            backbones.load_cached(config.backbone),
            validation_fraction=0.25,
            seed=3,
            progress=False,
        )
    return train, test, model


def test_fit_holds_out_a_seeded_validation_set_and_calibrates_on_it(calibrated):
    train, _, model = calibrated
    keep, held = calibration.holdout_split(len(train.images), 0.25, 3)
    assert model.n_train == len(keep) == 15 and model.thresholds.n_images == len(held) == 5
    reference = sj.fit(
        train.images[keep], model.config, backbones.load_cached(model.config.backbone), progress=False
    )
    np.testing.assert_array_equal(np.asarray(model.grams["level2"]), np.asarray(reference.grams["level2"]))
    maps, scores = reference.score(train.images[held], batch_size=5, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        expected = calibration.thresholds_from_scores(scores, maps, 0.01)
    assert model.thresholds.image == pytest.approx(expected.image, rel=1e-6)
    assert model.thresholds.pixel == pytest.approx(expected.pixel, rel=1e-6)


def test_predict_applies_the_thresholds(calibrated):
    _, test, model = calibrated
    out = model.predict(test.images, batch_size=5, progress=False)  # the calibration's compiled shape
    maps, scores = model.score(test.images, batch_size=5, progress=False)
    np.testing.assert_array_equal(out.maps, maps)
    t = model.thresholds
    np.testing.assert_array_equal(out.decisions, scores > t.image)
    np.testing.assert_array_equal(out.masks, (maps > t.pixel) & (scores > t.image)[:, None, None])
    np.testing.assert_allclose(out.normalized_scores, np.clip(scores / (2 * t.image), 0, 1), rtol=1e-6)
    assert out.decisions.any() and not out.decisions.all()  # the synthetic defects are found, goods pass


def test_thresholds_survive_a_checkpoint(calibrated, tmp_path):
    _, _, model = calibrated
    checkpoint.save(model, tmp_path / "m")
    loaded = checkpoint.load(tmp_path / "m")
    assert loaded.thresholds == model.thresholds
    uncalibrated = sj.fit_features(
        {k: np.asarray(v) for k, v in model.banks.items()} | {"level4": np.zeros((15, 2, 2, 320))},
        model.config,
        weights_sha256=model.weights_sha256,
    )
    checkpoint.save(uncalibrated, tmp_path / "u")
    assert checkpoint.load(tmp_path / "u").thresholds is None
    meta = tmp_path / "m" / checkpoint.METADATA_FILE
    data = json.loads(meta.read_text())
    data["thresholds"]["image"] = "high"
    meta.write_text(json.dumps(data))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.load(tmp_path / "m")


def test_predict_without_thresholds_says_how_to_get_them(calibrated):
    _, test, model = calibrated
    with pytest.raises(ValueError, match="no thresholds"):
        model.with_thresholds(None).predict(test.images, batch_size=5, progress=False)


def test_validation_needs_a_splittable_input():
    with pytest.raises(ValueError, match="validation_fraction"):
        calibration.split_images(iter([np.zeros((2, SIZE, SIZE, 3), np.uint8)]), 0.1, 0)
    with pytest.raises(ValueError, match="at least 2"):
        calibration.holdout_split(1, 0.5, 0)


def test_fit_with_an_explicit_validation_set_gives_the_same_thresholds(calibrated):
    train, _, model = calibrated
    keep, held = calibration.holdout_split(len(train.images), 0.25, 3)
    backbone = backbones.load_cached(model.config.backbone)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        explicit = sj.fit(
            train.images[keep], model.config, backbone, validation=train.images[held], progress=False
        )
    assert explicit.thresholds == model.thresholds and explicit.n_train == model.n_train
    with pytest.raises(ValueError, match="not both"):
        sj.fit(train.images, model.config, backbone, validation=train.images[held], validation_fraction=0.1)
