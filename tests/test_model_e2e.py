"""End to end with the real efficientnet_lite0 weights on the synthetic dataset."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest
from PIL import Image

import subspace_jax as sj
from subspace_jax import backbones
from subspace_jax.data import synthetic
from subspace_jax.engine.features import extract_features
from subspace_jax.eval import metrics
from subspace_jax.serving import checkpoint

IMAGE_SIZE = 128


@pytest.fixture(scope="module")
def backbone():
    return backbones.load("efficientnet_lite0")


@pytest.fixture(scope="module")
def data():
    return synthetic.generate("shape", n_train=12, n_test=8, image_size=IMAGE_SIZE, seed=0)


@pytest.fixture(scope="module")
def config():
    return sj.Config(
        backbone="efficientnet_lite0", image_size=IMAGE_SIZE, levels=(2, 3), sampling_level=4, lam=8, k=4
    )


@pytest.fixture(scope="module")
def fitted(backbone, data, config):
    return sj.fit(data[0].images, config, backbone, batch_size=4, progress=False)


@pytest.fixture(scope="module")
def scored(fitted, data):
    return fitted.score(data[1].images, batch_size=4, progress=False)


def test_fit_stores_banks_grams_and_backbone_identity(fitted, backbone, config):
    assert fitted.config == config and fitted.n_train == 12
    assert fitted.backbone_name == "efficientnet_lite0" and fitted.weights_sha256 == backbone.weights_sha256
    assert len(backbone.weights_sha256) == 64
    channels = backbone.level_channels
    assert fitted.banks["level2"].shape == (12, IMAGE_SIZE // 8, IMAGE_SIZE // 8, channels["level2"])
    assert fitted.banks["level3"].shape == (12, IMAGE_SIZE // 16, IMAGE_SIZE // 16, channels["level3"])
    assert fitted.sampling_bank.shape == (12, (IMAGE_SIZE // 32) ** 2 * channels["level4"])
    assert fitted.grams["level2"].shape == (12, 12)


def test_pixel_auroc_on_synthetic_shapes_is_above_0_9(scored, data):
    maps, scores = scored
    test = data[1]
    assert maps.shape == (8, IMAGE_SIZE, IMAGE_SIZE) and maps.dtype == np.float32 and scores.shape == (8,)
    np.testing.assert_allclose(scores, maps.max(axis=(1, 2)))
    assert metrics.pixel_auroc(maps, test.masks) > 0.9
    assert metrics.image_auroc(scores, test.labels) > 0.9


def test_pixel_mode_pixel_auroc_is_above_0_9(backbone, data, config):
    train, test = data
    model = sj.fit(
        train.images, dataclasses.replace(config, reconstruction="pixel", pixel_k=4), backbone, progress=False
    )
    maps, _ = model.score(test.images, batch_size=8, progress=False)
    assert metrics.pixel_auroc(maps, test.masks) > 0.9


def test_user_jit_of_score_images_equals_model_score(fitted, backbone, scored, data):
    apply_fn, params = backbone.pure()

    @jax.jit
    def pipeline(model, params, images):
        return sj.score_images(model, apply_fn, params, images)

    maps, scores = pipeline(fitted, params, data[1].images[:4])
    np.testing.assert_allclose(np.asarray(maps), scored[0][:4], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scores), scored[1][:4], rtol=1e-5)


def test_staged_timings_equal_the_fused_scorer_and_padding_does_not_leak(fitted, scored, data):
    timings: dict[str, float] = {}
    maps, scores = fitted.score(data[1].images, batch_size=3, timings=timings, progress=False)
    assert set(timings) == {"backbone", "sampling", "reconstruction", "maps"}
    assert all(seconds > 0 for seconds in timings.values())
    np.testing.assert_allclose(maps, scored[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores, scored[1], rtol=1e-5)


def test_fit_from_paths_and_from_batches_equals_fit_from_array(tmp_path, backbone, data, config, fitted):
    train = data[0]
    paths = []
    for index, image in enumerate(train.images):
        paths.append(tmp_path / f"{index:03d}.png")
        Image.fromarray(image).save(paths[-1])
    from_paths = sj.fit(paths, config, backbone, batch_size=5, progress=False)
    from_batches = sj.fit(
        (train.images[i : i + 5] for i in range(0, 12, 5)), config, backbone, progress=False
    )
    for model in (from_paths, from_batches):
        for key in fitted.banks:
            np.testing.assert_allclose(
                np.asarray(model.banks[key]), np.asarray(fitted.banks[key]), rtol=1e-5, atol=1e-5
            )


def test_fit_and_score_reject_bad_inputs(backbone, data, config, fitted):
    with pytest.raises(ValueError, match=r"images: expected images of shape \(B, 128, 128, 3\)"):
        sj.fit(data[0].images[:, :64, :64], config, backbone, progress=False)
    with pytest.raises(ValueError, match="config.backbone is 'wide_resnet50_2'"):
        sj.fit(
            data[0].images, dataclasses.replace(config, backbone="wide_resnet50_2"), backbone, progress=False
        )
    with pytest.raises(ValueError, match="batch_size"):
        fitted.score(data[1].images, batch_size=0)


def test_checkpoint_with_the_real_backbone(tmp_path, fitted, backbone, scored, data):
    path = checkpoint.save(fitted, tmp_path / "model")
    loaded = checkpoint.load(path, backbone=backbone)
    maps, scores = loaded.score(data[1].images, batch_size=4, progress=False)
    np.testing.assert_array_equal(maps, scored[0])
    np.testing.assert_array_equal(scores, scored[1])
    # Without a backbone, score loads efficientnet_lite0 by name and checks its hash itself.
    maps, _ = checkpoint.load(path).score(data[1].images[:2], progress=False)
    np.testing.assert_allclose(maps, scored[0][:2], rtol=1e-5, atol=1e-5)
    # The same bank recorded with other weights: the real backbone is refused on load and on score.
    features = {key: np.asarray(value) for key, value in fitted.banks.items()}
    features["level4"] = np.asarray(fitted.sampling_bank).reshape(12, 4, 4, -1)
    foreign = sj.fit_features(features, fitted.config, weights_sha256="0" * 64)
    foreign_path = checkpoint.save(foreign, tmp_path / "foreign")
    with pytest.raises(checkpoint.CheckpointError, match="weights differ"):
        checkpoint.load(foreign_path, backbone=backbone)
    with pytest.raises(ValueError, match="weights differ"):
        checkpoint.load(foreign_path).score(data[1].images[:1], backbone=backbone)


def test_extract_features_equals_the_backbone_on_whole_batches(backbone, data, config):
    images = data[0].images[:5]
    features = extract_features(
        images, config, backbone, keys=("level2", "pooled"), batch_size=2, progress=False
    )
    assert set(features) == {"level2", "pooled"}
    direct = backbone(images)
    for key in features:
        np.testing.assert_allclose(features[key], np.asarray(direct[key]), rtol=1e-4, atol=1e-4)
