"""Config validation and the map stage (upsampling, fusion, blur) against scipy references."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage as ndimage

import subspace_jax as sj
from subspace_jax.ops import maps as maps_lib


def test_config_defaults_and_roundtrip():
    config = sj.Config()
    assert config.backbone == "wide_resnet50_2"
    assert config.levels == (2, 3) and config.sampling_level == 4 and config.sampling == "subspace"
    assert config.k <= config.lam and config.output_size == 256
    other = sj.Config(backbone="efficientnet_lite0", levels=[3, 2], crop=224, sampling_level="pooled")
    assert other.levels == (2, 3) and other.output_size == 224
    assert sj.Config.from_dict(other.to_dict()) == other
    assert hash(other) == hash(sj.Config.from_dict(other.to_dict()))
    with pytest.raises(dataclasses.FrozenInstanceError):
        other.k = 3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("backbone", "vgg16"),
        ("image_size", 16),
        ("crop", 300),
        ("levels", ()),
        ("levels", (2, 5)),
        ("levels", (2, 2)),
        ("sampling_level", 0),
        ("sampling_level", "global"),
        ("sampling", "kmeans"),
        ("lam", 0),
        ("k", 0),
        ("k", 2.5),
        ("tol", -0.1),
        ("tol", 1.0),
        ("reconstruction", "patch"),
        ("radius", -1),
        ("pixel_k", 0),
        ("normalize_selection", 1),
        ("fusion", "max"),
        ("sigma", -1.0),
        ("bank_dtype", "float16"),
        ("seed", 1.5),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"Config.{field}"):
        sj.Config(**{field: value})


def test_config_k_at_most_lam_when_sampling():
    with pytest.raises(ValueError, match="Config.k.*lam=5"):
        sj.Config(k=6, lam=5)
    assert sj.Config(k=6, lam=5, sampling="none").k == 6  # lam is unused without sampling


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown keys"):
        sj.Config.from_dict({"k": 3, "lamda": 5})


def test_feature_keys_add_the_sampling_level_only_for_subspace_sampling():
    assert sj.Config(levels=(2, 3), sampling_level=4).feature_keys == ("level2", "level3", "level4")
    assert sj.Config(levels=(2, 3), sampling_level=3).feature_keys == ("level2", "level3")
    assert sj.Config(levels=(2,), sampling="random").feature_keys == ("level2",)


@pytest.mark.parametrize("sigma", [0.5, 1.5, 4.0])
def test_gaussian_blur_equals_scipy_gaussian_filter(sigma):
    maps = np.random.default_rng(0).normal(size=(2, 40, 37)).astype(np.float32)
    ours = np.asarray(maps_lib.gaussian_blur(jnp.asarray(maps), sigma))
    reference = np.stack(
        [ndimage.gaussian_filter(m.astype(np.float64), sigma, mode="reflect", truncate=4.0) for m in maps]
    )
    np.testing.assert_allclose(ours, reference, atol=2e-6)


def test_gaussian_kernel_radius_is_four_sigma():
    assert maps_lib.gaussian_kernel(4.0).shape == (33,)
    assert maps_lib.gaussian_kernel(1.0).shape == (9,)
    np.testing.assert_allclose(maps_lib.gaussian_kernel(2.0).sum(), 1.0, rtol=1e-6)


def test_sigma_zero_disables_blur():
    maps = jnp.asarray(np.random.default_rng(1).normal(size=(1, 8, 8)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(maps_lib.gaussian_blur(maps, 0.0)), np.asarray(maps))


@pytest.mark.parametrize("fusion", ["sum", "mean", "product"])
def test_fuse_maps_matches_scipy_upsampling_fusion_and_blur(fusion):
    rng = np.random.default_rng(2)
    level2 = rng.uniform(0.5, 2.0, size=(2, 8, 8)).astype(np.float32)
    level3 = rng.uniform(0.5, 2.0, size=(2, 4, 4)).astype(np.float32)
    maps, scores = maps_lib.maps_and_scores(
        {"level2": jnp.asarray(level2), "level3": jnp.asarray(level3)}, (32, 32), fusion=fusion, sigma=1.5
    )

    def upsample(m, factor):  # half-pixel bilinear with clamped edges = jax.image.resize "bilinear"
        return np.stack(
            [ndimage.zoom(x.astype(np.float64), factor, order=1, grid_mode=True, mode="nearest") for x in m]
        )

    up2, up3 = upsample(level2, 4), upsample(level3, 8)
    fused = {"sum": up2 + up3, "mean": (up2 + up3) / 2, "product": up2 * up3}[fusion]
    reference = np.stack([ndimage.gaussian_filter(m, 1.5, mode="reflect", truncate=4.0) for m in fused])
    np.testing.assert_allclose(np.asarray(maps), reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(scores), reference.max(axis=(1, 2)), rtol=1e-5)
    assert maps.dtype == jnp.float32 and maps.shape == (2, 32, 32)
