"""Issue 14's Config switches (aggregation, channel projection, image coreset, top-fraction image score)
against independent references: each switch must equal the plain model run on features transformed by
numpy/scipy/sklearn code written here, not by the package."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.ndimage
from sklearn.decomposition import PCA

import subspace_jax as sj
from subspace_jax import backbones, configs
from subspace_jax.engine import scorer as scoring
from subspace_jax.ops.projection import random_projection
from subspace_jax.runner import evaluation
from subspace_jax.serving import checkpoint

N_TRAIN = 14
SHAPES = {"level2": (8, 8, 6), "level3": (4, 4, 10), "pooled": (32,)}


def features(seed: int, n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {key: rng.normal(size=(n, *shape)).astype(np.float32) for key, shape in SHAPES.items()}


def config(**overrides) -> sj.Config:
    base = dict(
        backbone="efficientnet_lite0",
        image_size=32,
        levels=(2, 3),
        sampling_level="pooled",
        sampling="subspace",
        lam=6,
        k=3,
        sigma=1.0,
    )
    return sj.Config(**(base | overrides))


def box_mean(x: np.ndarray, size: int) -> np.ndarray:
    """Mean over the size x size window inside the map (scipy reference)."""
    box = [1, size, size, 1]
    total = scipy.ndimage.uniform_filter(x.astype(np.float64), box, mode="constant")
    count = scipy.ndimage.uniform_filter(np.ones((1,) + x.shape[1:3] + (1,)), box, mode="constant")
    return (total / count).astype(np.float32)


def test_aggregate_equals_the_plain_model_on_box_filtered_features():
    train, test = features(0, N_TRAIN), features(1, 3)
    model = sj.fit_features(train, config(aggregate=3))
    plain = sj.fit_features({k: box_mean(v, 3) if v.ndim == 4 else v for k, v in train.items()}, config())
    maps, scores = model.score(test, progress=False)
    ref_maps, ref_scores = plain.score(
        {k: box_mean(v, 3) if v.ndim == 4 else v for k, v in test.items()}, progress=False
    )
    np.testing.assert_allclose(maps, ref_maps, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)


def test_pca_projection_equals_the_plain_model_on_sklearn_projected_features():
    train, test = features(2, N_TRAIN), features(3, 3)
    model = sj.fit_features(train, config(projection="pca", projection_channels=(3, 0)))
    assert set(model.projections) == {"level2"} and model.banks["level2"].shape[-1] == 3
    assert model.banks["level3"].shape[-1] == 10
    components = PCA(n_components=3).fit(train["level2"].reshape(-1, 6)).components_.T  # (6, 3)
    # PCA directions are defined up to sign; residual norms do not depend on it.
    project = {**train, "level2": train["level2"] @ components}
    plain = sj.fit_features(project, config())
    maps, _ = model.score(test, progress=False)
    ref_maps, _ = plain.score({**test, "level2": test["level2"] @ components}, progress=False)
    np.testing.assert_allclose(maps, ref_maps, rtol=1e-3, atol=1e-3)


def test_random_projection_is_a_seeded_gaussian_and_changes_with_the_seed():
    train = features(4, N_TRAIN)
    a = sj.fit_features(train, config(projection="random", projection_channels=(4, 5)))
    b = sj.fit_features(train, config(projection="random", projection_channels=(4, 5)))
    c = sj.fit_features(train, config(projection="random", projection_channels=(4, 5), seed=1))
    np.testing.assert_array_equal(a.projections["level3"], b.projections["level3"])
    assert not np.array_equal(a.projections["level3"], c.projections["level3"])
    assert a.projections["level3"].shape == (10, 5)
    # The documented key scheme: random_projection(fold_in(key(seed), level), c, c').
    expected = random_projection(jax.random.fold_in(jax.random.key(0), 3), 10, 5)
    np.testing.assert_array_equal(np.asarray(a.projections["level3"]), np.asarray(expected))
    np.testing.assert_allclose(
        np.asarray(a.banks["level3"]),
        train["level3"] @ np.asarray(a.projections["level3"]),
        rtol=1e-4,
        atol=1e-4,
    )


def greedy_kcenter(points: np.ndarray, m: int) -> list[int]:
    chosen = [0]
    while len(chosen) < m:
        dists = [min(float(np.sum((p - points[j]) ** 2)) for j in chosen) for p in points]
        chosen.append(int(np.argmax(dists)))
    return chosen


def test_coreset_keeps_the_greedy_kcenter_images_of_the_sampling_level():
    train, test = features(5, N_TRAIN), features(6, 2)
    model = sj.fit_features(train, config(coreset=8))
    keep = sorted(greedy_kcenter(train["pooled"].astype(np.float64), 8))
    assert model.n_train == 8
    np.testing.assert_array_equal(np.asarray(model.banks["level3"]), train["level3"][keep])
    plain = sj.fit_features({k: v[keep] for k, v in train.items()}, config())
    np.testing.assert_allclose(
        model.score(test, progress=False)[0], plain.score(test, progress=False)[0], rtol=1e-5
    )


@pytest.mark.parametrize("fraction", [0.01, 0.25])
def test_score_fraction_is_the_mean_of_the_top_pixels(fraction):
    train, test = features(7, N_TRAIN), features(8, 3)
    maps, scores = sj.fit_features(train, config(score_fraction=fraction)).score(test, progress=False)
    maps = np.asarray(maps)
    count = max(1, round(fraction * maps[0].size))
    expected = [np.sort(m.ravel())[::-1][:count].mean() for m in maps]
    np.testing.assert_allclose(scores, expected, rtol=1e-5)
    # The maps themselves do not depend on the image score.
    np.testing.assert_allclose(
        maps, sj.fit_features(train, config()).score(test, progress=False)[0], rtol=1e-6
    )


def test_staged_scoring_applies_the_switches_like_the_fused_scorer():
    train, test = features(9, N_TRAIN), features(10, 4)
    cfg = config(aggregate=3, projection="pca", projection_channels=(2, 4), coreset=10, score_fraction=0.05)
    model = sj.fit_features(train, cfg)
    fused = sj.score_features(model, test)
    timings: dict = {}
    maps, scores = scoring.score_in_batches(model, test, batch_size=2, timings=timings, progress=False)
    assert set(timings) == {"input", "sampling", "reconstruction", "maps"}
    np.testing.assert_allclose(maps, fused[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores, fused[1], rtol=1e-5, atol=1e-6)


def test_checkpoint_round_trip_keeps_the_projections(tmp_path):
    train, test = features(11, N_TRAIN), features(12, 2)
    model = sj.fit_features(
        train, config(projection="pca", projection_channels=(3, 4), bank_dtype="bfloat16")
    )
    checkpoint.save(model, tmp_path / "ckpt")
    loaded = checkpoint.load(tmp_path / "ckpt")
    np.testing.assert_array_equal(loaded.projections["level2"], model.projections["level2"])
    np.testing.assert_array_equal(loaded.score(test, progress=False)[0], model.score(test, progress=False)[0])


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(aggregate=2), "aggregate"),
        (dict(aggregate=0), "aggregate"),
        (dict(projection="svd", projection_channels=(1, 1)), "projection"),
        (dict(projection="pca"), "projection_channels"),
        (dict(projection="pca", projection_channels=(2,)), "projection_channels"),
        (dict(projection_channels=(2, 2)), "projection_channels"),
        (dict(projection="pca", projection_channels=(-1, 2)), "projection_channels"),
        (dict(coreset=-1), "coreset"),
        (dict(coreset=2), "coreset"),
        (dict(score_fraction=1.0), "score_fraction"),
    ],
)
def test_invalid_switches_raise_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=f"Config.{field}"):
        config(**overrides)


def test_round_trip_through_dict_and_too_many_channels():
    cfg = config(projection="pca", projection_channels=(3, 4), aggregate=3, coreset=9, score_fraction=0.01)
    assert sj.Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="projection_channels"):
        sj.fit_features(features(0, N_TRAIN), config(projection="pca", projection_channels=(7, 1)))
    with pytest.raises(ValueError, match="coreset"):
        sj.fit_features(features(0, N_TRAIN), config(coreset=N_TRAIN + 1))


def test_mtd_runner_default_is_the_tuned_config_and_the_paper_config_is_kept():
    assert evaluation.DATASET_CONFIGS["mtd"]["subspace"] == "mtd_default"
    default = configs.load("mtd_default")
    assert evaluation.default_config("subspace", "mtd") == default
    paper = configs.load(configs.CONFIG_DIR / "mtd_paper.py")
    assert paper == configs.load("mtd_paper")
    # The paper's MTD setting: today's behaviour, none of issue 14's switches.
    assert (paper.levels, paper.sampling_level, paper.k, paper.lam) == ((2, 3, 4), "pooled", 5, 50)
    assert (paper.projection, paper.aggregate, paper.coreset, paper.score_fraction) == ("none", 1, 0, 0.0)
    assert paper.bank_dtype == "float32"
    # The default differs from it only in the switches chosen on half A.
    changed = {k for k, v in default.to_dict().items() if paper.to_dict()[k] != v}
    assert changed == {"k", "projection", "projection_channels", "bank_dtype", "score_fraction"}


def test_input_normalization_in_config_backbone_selects_the_backbone_and_keeps_fitted_models_apart():
    """Config.backbone "efficientnet_lite0:imagenet" feeds ImageNet mean/std; the default stays the TF
    (x - 127) / 128, and a model fit with one normalisation refuses a backbone with the other."""
    assert config().backbone == "efficientnet_lite0"
    assert config(backbone="efficientnet_lite0:tf").backbone == "efficientnet_lite0"
    imagenet_config = config(backbone="efficientnet_lite0:imagenet", levels=(3,))
    assert sj.Config.from_dict(imagenet_config.to_dict()) == imagenet_config
    with pytest.raises(ValueError, match="^SubspaceConfig.backbone: expected"):
        config(backbone="efficientnet_lite0:caffe")
    tf_net = backbones.load("efficientnet_lite0", "random", seed=2)
    imagenet_net = backbones.load("efficientnet_lite0:imagenet", "random", seed=2)
    images = np.random.default_rng(6).integers(0, 256, (N_TRAIN, 32, 32, 3), dtype=np.uint8)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    as_tf = (127.0 + 128.0 * (images / 255.0 - mean) / std).astype(np.float32)  # same network input
    fitted = sj.fit(images, imagenet_config, imagenet_net, progress=False)
    assert fitted.backbone_name == "efficientnet_lite0:imagenet"
    # The transformed pixels leave [0, 255], which the batched extractor refuses: call the network.
    tf_features = {k: np.asarray(v) for k, v in tf_net(as_tf).items() if k in ("level3", "pooled")}
    reference = sj.fit_features(tf_features, imagenet_config)
    for key, bank in reference.banks.items():
        scale = float(np.abs(bank).max())
        np.testing.assert_allclose(fitted.banks[key], bank, rtol=0, atol=1e-4 * scale, err_msg=key)
    with pytest.raises(ValueError, match="config.backbone"):
        sj.fit(images, imagenet_config, tf_net, progress=False)
    with pytest.raises(ValueError, match="was fit with"):
        fitted.score(images, backbone=tf_net, progress=False)
