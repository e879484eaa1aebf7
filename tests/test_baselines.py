"""PatchCore and SPADE baselines against independent references (numpy, scipy, torch)."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial.distance import cdist

import subspace_jax as sj
from subspace_jax import backbones
from subspace_jax.data import synthetic
from subspace_jax.eval import metrics
from subspace_jax.methods import patchcore, spade
from subspace_jax.methods import registry as methods
from subspace_jax.methods.base import check_features
from subspace_jax.methods.patchcore import PatchCoreConfig
from subspace_jax.methods.spade import SpadeConfig
from subspace_jax.ops import maps as maps_lib
from subspace_jax.ops.aggregation import aggregate
from subspace_jax.ops.kcenter import kcenter
from subspace_jax.ops.neighbors import nearest_distance, nearest_neighbor

RNG_SEED = 1234


def rng(offset: int = 0) -> np.random.Generator:
    return np.random.default_rng(RNG_SEED + offset)


# --- references written here, independent of the package ------------------------------------------------


def numpy_greedy_k_center(points: np.ndarray, n_select: int, start: int) -> list[int]:
    points = points.astype(np.float64)
    selected = [start]
    min_dist = ((points - points[start]) ** 2).sum(axis=1)
    for _ in range(n_select - 1):
        nxt = int(np.argmax(min_dist))
        selected.append(nxt)
        min_dist = np.minimum(min_dist, ((points - points[nxt]) ** 2).sum(axis=1))
    return selected


def numpy_local_average(feature_map: np.ndarray) -> np.ndarray:
    """3x3 spatial mean with zeros outside the map counted (count_include_pad=True)."""
    return ndimage.uniform_filter(feature_map, size=(1, 3, 3, 1), mode="constant", cval=0.0)


def smooth_features(n: int, size: int, channels: int, seed: int) -> np.ndarray:
    """Nominal-looking feature maps: a shared smooth pattern plus small per-image noise."""
    g = rng(seed)
    base = ndimage.gaussian_filter(g.normal(size=(size, size, channels)), sigma=(2, 2, 0)) * 3.0
    return (base[None] + 0.05 * g.normal(size=(n, size, size, channels))).astype(np.float32)


# --- shared plumbing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_query", "n_bank", "query_chunk", "bank_chunk"),
    [(37, 53, 8, 16), (37, 53, 1000, 1000), (5, 1, 2, 3), (64, 100, 64, 7)],
)
def test_nearest_neighbor_matches_cdist(n_query, n_bank, query_chunk, bank_chunk):
    g = rng(1)
    queries = g.normal(size=(n_query, 6)).astype(np.float32)
    bank = g.normal(size=(n_bank, 6)).astype(np.float32)
    dist, idx = nearest_neighbor(queries, bank, query_chunk=query_chunk, bank_chunk=bank_chunk)
    full = cdist(queries.astype(np.float64), bank.astype(np.float64))
    np.testing.assert_array_equal(np.asarray(idx), full.argmin(axis=1))
    np.testing.assert_allclose(np.asarray(dist), full.min(axis=1), rtol=1e-5, atol=1e-5)


def test_nearest_neighbor_is_accurate_far_from_the_origin():
    g = rng(20)
    bank = (100.0 + g.normal(size=(80, 32))).astype(np.float32)
    queries = np.concatenate([bank[[3, 41]], bank[:5] + 1e-3 * g.normal(size=(5, 32))]).astype(np.float32)
    dist, idx = nearest_neighbor(queries, bank, query_chunk=4, bank_chunk=16)
    full = cdist(queries.astype(np.float64), bank.astype(np.float64))
    np.testing.assert_array_equal(np.asarray(idx), [3, 41, 0, 1, 2, 3, 4])
    assert np.asarray(dist)[:2].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(np.asarray(dist), full.min(axis=1), rtol=1e-3, atol=1e-6)


def test_nearest_neighbor_small_chunks_equal_one_big_chunk():
    g = rng(2)
    queries = g.normal(size=(300, 12)).astype(np.float32)
    bank = g.normal(size=(410, 12)).astype(np.float32)
    small = nearest_neighbor(queries, bank, query_chunk=16, bank_chunk=32)
    big = nearest_neighbor(queries, bank, query_chunk=300, bank_chunk=410)
    np.testing.assert_array_equal(np.asarray(small[1]), np.asarray(big[1]))
    np.testing.assert_allclose(np.asarray(small[0]), np.asarray(big[0]), rtol=1e-6, atol=1e-6)


def test_nearest_neighbor_chunks_bound_compiled_memory():
    queries = jnp.zeros((4096, 16), jnp.float32)
    bank = jnp.zeros((4096, 16), jnp.float32)
    full_matrix_bytes = 4096 * 4096 * 4  # 64 MiB

    def temp_bytes(query_chunk: int, bank_chunk: int) -> int:
        compiled = nearest_neighbor.lower(
            queries, bank, query_chunk=query_chunk, bank_chunk=bank_chunk
        ).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    chunked = temp_bytes(256, 256)
    unchunked = temp_bytes(4096, 4096)
    assert unchunked >= full_matrix_bytes
    # One 256x256 block (256 KiB) plus padded inputs; far below the full distance matrix.
    assert chunked < 2 * 1024 * 1024, chunked


@pytest.mark.parametrize(
    ("n_query", "n_bank", "query_chunk", "bank_chunk"),
    [(37, 53, 8, 16), (37, 53, 1000, 1000), (5, 1, 2, 3), (64, 100, 64, 7)],
)
def test_nearest_distance_matches_cdist(n_query, n_bank, query_chunk, bank_chunk):
    g = rng(3)
    queries = (5.0 + g.normal(size=(n_query, 24))).astype(np.float32)
    bank = (5.0 + g.normal(size=(n_bank, 24))).astype(np.float32)
    dist = nearest_distance(queries, bank, query_chunk=query_chunk, bank_chunk=bank_chunk)
    full = cdist(queries.astype(np.float64), bank.astype(np.float64))
    np.testing.assert_allclose(np.asarray(dist), full.min(axis=1), rtol=1e-5, atol=1e-5)


def test_nearest_distance_error_near_zero_is_bounded_by_the_norms():
    g = rng(21)
    bank = (100.0 + g.normal(size=(80, 32))).astype(np.float32)
    queries = np.concatenate([bank[[3, 41]], bank[:5] + 0.05 * g.normal(size=(5, 32))]).astype(np.float32)
    dist = np.asarray(nearest_distance(queries, bank, query_chunk=4, bank_chunk=16))
    exact = cdist(queries.astype(np.float64), bank.astype(np.float64)).min(axis=1)
    centred = bank - bank.mean(axis=0)
    # The documented bound on the squared distance: about 1e-7 * (||q||^2 + ||b||^2) after centring.
    bound = 1e-6 * 2 * np.max(np.sum(centred**2, axis=1))
    assert np.all(np.abs(dist**2 - exact**2) <= bound), (dist, exact)
    np.testing.assert_allclose(dist[2:], exact[2:], rtol=1e-3)


def test_nearest_distance_chunks_bound_compiled_memory():
    queries = jnp.zeros((4096, 16), jnp.float32)
    bank = jnp.zeros((4096, 16), jnp.float32)
    compiled = nearest_distance.lower(queries, bank, query_chunk=256, bank_chunk=256).compile()
    assert compiled.memory_analysis().temp_size_in_bytes < 2 * 1024 * 1024


def test_nearest_neighbor_rejects_mismatched_bank():
    with pytest.raises(ValueError, match="bank"):
        nearest_neighbor(np.zeros((3, 4), np.float32), np.zeros((5, 3), np.float32))


def test_feature_dict_errors_name_the_key():
    good = np.zeros((2, 4, 4, 3), np.float32)
    with pytest.raises(ValueError, match="missing \\['level3'\\]"):
        check_features({"level2": good}, ["level2", "level3"])
    with pytest.raises(ValueError, match=r"features\['level2'\].*\(N, h, w, c\)"):
        check_features({"level2": good[0]}, ["level2"])
    with pytest.raises(ValueError, match="same batch size"):
        check_features({"level2": good, "pooled": np.zeros((3, 3))}, ["level2", "pooled"])


@pytest.mark.parity
def test_level_maps_are_upsampled_averaged_and_smoothed_like_torch_and_scipy():
    import torch  # the parity extra
    import torch.nn.functional as F

    g = rng(3)
    coarse, fine = g.normal(size=(2, 4, 4)).astype(np.float32), g.normal(size=(2, 8, 8)).astype(np.float32)
    config = SpadeConfig(image_size=32, levels=(2, 3), sigma=4.0)
    ours = np.asarray(
        maps_lib.fuse_maps({"level2": fine, "level3": coarse}, (32, 32), fusion="mean", sigma=config.sigma)
    )

    def up(x):
        return F.interpolate(torch.from_numpy(x)[:, None], size=32, mode="bilinear", align_corners=False)[
            :, 0
        ].numpy()

    mean = (up(fine) + up(coarse)) / 2
    reference = np.stack([ndimage.gaussian_filter(m, sigma=4.0, mode="reflect", truncate=4.0) for m in mean])
    np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-5)


# --- PatchCore ---------------------------------------------------------------------------------------------


def test_local_average_counts_padding_zeros():
    x = rng(4).normal(size=(2, 5, 7, 3)).astype(np.float32)
    np.testing.assert_allclose(
        np.asarray(aggregate(jnp.asarray(x), 3, include_padding=True)),
        numpy_local_average(x),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parity
def test_patch_embeddings_match_torch_pool_and_interpolate():
    import torch  # the parity extra
    import torch.nn.functional as F

    g = rng(5)
    level2 = g.normal(size=(2, 8, 8, 4)).astype(np.float32)
    level3 = g.normal(size=(2, 4, 4, 6)).astype(np.float32)
    ours = np.asarray(patchcore.patch_embeddings({"level2": level2, "level3": level3}, (2, 3)))

    def torch_level(x: np.ndarray, size: int) -> np.ndarray:
        t = torch.from_numpy(x).permute(0, 3, 1, 2)
        t = F.avg_pool2d(t, kernel_size=3, stride=1, padding=1)  # count_include_pad=True by default
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
        return t.permute(0, 2, 3, 1).numpy()

    reference = np.concatenate([torch_level(level2, 8), torch_level(level3, 8)], axis=-1)
    assert ours.shape == (2, 8, 8, 10)
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("n_points", "n_select", "start", "offset"),
    [(200, 20, 0, 0.0), (200, 37, 123, 0.0), (50, 50, 7, 0.0), (300, 40, 11, 50.0)],
)
def test_greedy_coreset_matches_numpy_reference(n_points, n_select, start, offset):
    points = (offset + rng(6).normal(size=(n_points, 8))).astype(np.float32)
    ours = kcenter(jnp.asarray(points), n_select, start)
    assert ours.dtype == jnp.int32
    assert np.asarray(ours).tolist() == numpy_greedy_k_center(points, n_select, start)


def test_greedy_coreset_of_all_distinct_points_is_a_permutation():
    points = rng(7).normal(size=(40, 3)).astype(np.float32)
    chosen = np.asarray(kcenter(jnp.asarray(points), 40, 5))
    assert sorted(chosen.tolist()) == list(range(40))


def test_select_coreset_uses_seeded_projection_and_start():
    points = rng(8).normal(size=(300, 40)).astype(np.float32)
    seed, proj_dim, ratio = 3, 16, 0.1
    ours = np.asarray(patchcore.select_coreset(jnp.asarray(points), ratio, proj_dim, seed))
    # The documented key scheme, regenerated here; the greedy step is numpy's.
    start_key, proj_key = jax.random.split(jax.random.key(seed))
    start = int(jax.random.randint(start_key, (), 0, 300, dtype=jnp.int32))
    projection = np.asarray(jax.random.normal(proj_key, (40, proj_dim), jnp.float32)) / np.sqrt(proj_dim)
    expected = numpy_greedy_k_center(points.astype(np.float64) @ projection, 30, start)
    assert ours.tolist() == expected
    # A different seed gives a different start, hence a different coreset.
    assert (
        np.asarray(patchcore.select_coreset(jnp.asarray(points), ratio, proj_dim, seed + 1)).tolist()
        != expected
    )


def test_select_coreset_without_projection_and_with_full_ratio():
    points = rng(9).normal(size=(60, 5)).astype(np.float32)
    start_key, _ = jax.random.split(jax.random.key(0))
    start = int(jax.random.randint(start_key, (), 0, 60, dtype=jnp.int32))
    # projection_dim >= d: selection runs on the raw points.
    ours = patchcore.select_coreset(jnp.asarray(points), 0.25, 128, 0)
    assert np.asarray(ours).tolist() == numpy_greedy_k_center(points, 15, start)
    assert np.asarray(patchcore.select_coreset(jnp.asarray(points), 1.0, 128, 0)).tolist() == list(range(60))
    assert patchcore.coreset_size(10, 0.01) == 1


def test_reweighted_scores_match_numpy_eq7():
    g = rng(10)
    bank = g.normal(size=(30, 4)).astype(np.float32)
    embeddings = g.normal(size=(3, 12, 4)).astype(np.float32)
    b = 5
    dist_all = cdist(embeddings.reshape(-1, 4).astype(np.float64), bank.astype(np.float64)).reshape(3, 12, 30)
    patch_scores = dist_all.min(axis=2)
    nearest = dist_all.argmin(axis=2)
    expected = []
    for i in range(3):
        worst = int(np.argmax(patch_scores[i]))
        s_star = patch_scores[i, worst]
        m_star = bank[nearest[i, worst]].astype(np.float64)
        support = np.argsort(((bank - m_star) ** 2).sum(axis=1))[:b]
        to_support = np.linalg.norm(bank[support] - embeddings[i, worst], axis=1)
        expected.append((1.0 - np.exp(s_star) / np.exp(to_support).sum()) * s_star)
    ours = patchcore.reweighted_scores(
        jnp.asarray(embeddings),
        jnp.asarray(patch_scores, jnp.float32),
        jnp.asarray(nearest, jnp.int32),
        jnp.asarray(bank),
        b,
    )
    np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-5)
    assert np.all(np.asarray(ours) < patch_scores.max(axis=1))


def test_patchcore_scores_match_brute_force_reference():
    # One level on a 32x32 grid, output 32, no smoothing, full bank: the map is exactly each patch's
    # nearest-neighbour distance, so the whole pipeline can be checked against scipy.
    train = {"level2": rng(11).normal(size=(3, 32, 32, 5)).astype(np.float32)}
    test = {"level2": rng(12).normal(size=(2, 32, 32, 5)).astype(np.float32)}
    config = PatchCoreConfig(
        image_size=32, levels=(2,), coreset_ratio=1.0, sigma=0.0, query_chunk=100, bank_chunk=300
    )
    model = patchcore.fit_features(train, config)
    assert model.bank.shape == (3 * 32 * 32, 5)
    maps, scores = model.score(test, progress=False)
    bank = numpy_local_average(train["level2"]).reshape(-1, 5).astype(np.float64)
    queries = numpy_local_average(test["level2"]).reshape(-1, 5).astype(np.float64)
    expected = cdist(queries, bank).min(axis=1).reshape(2, 32, 32)
    assert maps.shape == (2, 32, 32) and maps.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(maps), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(np.asarray(scores), expected.max(axis=(1, 2)), rtol=1e-4, atol=1e-4)


def synthetic_levels(n: int, seed: int) -> dict[str, np.ndarray]:
    return {
        "level1": smooth_features(n, 32, 4, seed),
        "level2": smooth_features(n, 16, 6, seed + 1),
        "level3": smooth_features(n, 8, 8, seed + 2),
    }


def with_outlier_patch(features: dict[str, np.ndarray], row: int, col: int) -> dict[str, np.ndarray]:
    """Copies of the level maps with the region of level-2 cell (row, col) (4x4 output pixels) pushed far
    away at every level; "pooled" is recomputed from level 3."""
    out = {}
    for key, value in features.items():
        if key == "pooled":
            continue
        scale = {"level1": 2, "level2": 1, "level3": 0.5}[key]
        value = value.copy()
        r, c = int(row * scale), int(col * scale)
        span = max(1, int(scale))
        value[:, r : r + span, c : c + span, :] += 8.0
        out[key] = value
    out["pooled"] = out["level3"].mean(axis=(1, 2))
    return out


@pytest.mark.parametrize("reweight", [False, True])
def test_patchcore_map_peaks_at_out_of_distribution_patch(reweight):
    train = synthetic_levels(4, seed=20)
    config = PatchCoreConfig(image_size=64, coreset_ratio=0.25, projection_dim=4, reweight=reweight)
    model = patchcore.fit_features(train, config)
    assert model.bank.shape == (int(4 * 16 * 16 * 0.25), 6 + 8)
    clean = {k: v[:1] for k, v in train.items()}
    defective = with_outlier_patch(clean, row=5, col=10)
    maps, scores = model.score({k: np.concatenate([clean[k], defective[k]]) for k in clean}, progress=False)
    peak = np.unravel_index(int(np.argmax(maps[1])), maps[1].shape)
    # Level-2 cell (5, 10) covers output pixels [20, 24) x [40, 44); stride 4.
    assert abs(peak[0] // 4 - 5) <= 1 and abs(peak[1] // 4 - 10) <= 1, peak
    assert float(scores[1]) > 3 * float(scores[0])


# --- SPADE ----------------------------------------------------------------------------------------------


def test_nearest_images_match_numpy_argsort():
    g = rng(30)
    # A large common offset (post-ReLU features are far from the origin) stresses cancellation.
    train, test = 50.0 + g.normal(size=(25, 7)), 50.0 + g.normal(size=(4, 7))
    train, test = train.astype(np.float32).astype(np.float64), test.astype(np.float32).astype(np.float64)
    test[1] = train[11]
    dist, idx = spade.nearest_images(jnp.asarray(test, jnp.float32), jnp.asarray(train, jnp.float32), 6)
    full = cdist(test, train)
    order = np.argsort(full, axis=1)[:, :6]
    np.testing.assert_array_equal(np.asarray(idx), order)
    np.testing.assert_allclose(
        np.asarray(dist), np.take_along_axis(full, order, axis=1), rtol=1e-5, atol=1e-5
    )
    assert idx[1, 0] == 11 and float(dist[1, 0]) == 0.0


def test_spade_scores_match_brute_force_reference():
    # Two levels on the output grid itself and no smoothing: each map pixel is the mean over levels of
    # the nearest distance among the K nearest images' features at that level.
    g = rng(31)
    k = 3
    train = {
        "pooled": g.normal(size=(8, 5)).astype(np.float32),
        "level1": g.normal(size=(8, 32, 32, 3)).astype(np.float32),
        "level2": g.normal(size=(8, 32, 32, 4)).astype(np.float32),
    }
    test = {
        "pooled": g.normal(size=(2, 5)).astype(np.float32),
        "level1": g.normal(size=(2, 32, 32, 3)).astype(np.float32),
        "level2": g.normal(size=(2, 32, 32, 4)).astype(np.float32),
    }
    config = SpadeConfig(
        image_size=32, levels=(1, 2), top_k_images=k, sigma=0.0, query_chunk=200, bank_chunk=500
    )
    maps, scores = spade.fit_features(train, config).score(test, progress=False)
    pooled = cdist(test["pooled"], train["pooled"])
    for i in range(2):
        gallery = np.argsort(pooled[i])[:k]
        per_level = [
            cdist(test[key][i].reshape(-1, c), train[key][gallery].reshape(-1, c)).min(axis=1).reshape(32, 32)
            for key, c in (("level1", 3), ("level2", 4))
        ]
        np.testing.assert_allclose(np.asarray(maps[i]), np.mean(per_level, axis=0), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(float(scores[i]), np.sort(pooled[i])[:k].mean(), rtol=1e-5)


def test_spade_map_peaks_at_out_of_distribution_patch():
    train = synthetic_levels(6, seed=40)
    train["pooled"] = train["level3"].mean(axis=(1, 2))
    model = spade.fit_features(train, SpadeConfig(image_size=64, top_k_images=50))
    assert model.top_k == 6  # fewer training images than K: all of them
    clean = {k: v[:1] for k, v in train.items()}
    defective = with_outlier_patch(clean, row=9, col=3)
    maps, scores = model.score({k: np.concatenate([clean[k], defective[k]]) for k in clean}, progress=False)
    assert maps.shape == (2, 64, 64)
    peak = np.unravel_index(int(np.argmax(maps[1])), maps[1].shape)
    assert abs(peak[0] // 4 - 9) <= 1 and abs(peak[1] // 4 - 3) <= 1, peak
    assert float(maps[1].max()) > 3 * float(maps[0].max())
    assert float(scores[1]) > float(scores[0])


def test_spade_rejects_features_of_another_resolution():
    train = synthetic_levels(3, seed=50)
    train["pooled"] = train["level3"].mean(axis=(1, 2))
    model = spade.fit_features(train, SpadeConfig(image_size=64))
    bad = dict(train, level1=np.zeros((3, 16, 16, 4), np.float32))
    with pytest.raises(ValueError, match="level1"):
        model.score(bad, progress=False)


# --- fit / score on images ----------------------------------------------------------------------------------


def block_mean_features(params, images):
    x = jnp.asarray(images, jnp.float32) / 255.0 * params["gain"]
    b, h, w, c = x.shape

    def pool(s):
        return x.reshape(b, h // s, s, w // s, s, c).mean(axis=(2, 4))

    return {"level1": pool(2), "level2": pool(4), "level3": pool(8), "pooled": x.mean(axis=(1, 2))}


class BlockMeanBackbone:
    """A stand-in backbone with the backbones contract: block means of the image at strides 2, 4, 8."""

    def __init__(self, name: str = "resnet18", gain: float = 1.0):
        self.name = name
        self.weights_sha256 = f"{int(gain * 1000):064d}"
        self.params = {"gain": jnp.float32(gain)}

    def __call__(self, images):
        return block_mean_features(self.params, images)

    def pure(self):
        return block_mean_features, self.params


def textured_images(n: int, seed: int) -> np.ndarray:
    g = rng(seed)
    yy, xx = np.mgrid[:64, :64]
    base = 128 + 60 * np.sin(xx / 3.0)[..., None] * np.array([1.0, 0.5, 0.2])
    return np.clip(base[None] + g.normal(0, 4, size=(n, 64, 64, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("method", ["patchcore", "spade"])
def test_fit_and_score_images_in_batches(method):
    module = methods.get(method)
    config_cls = module.config_cls
    config = config_cls(backbone="resnet18", image_size=64, levels=(2, 3))
    backbone = BlockMeanBackbone()
    train = textured_images(5, seed=60)
    test = textured_images(3, seed=61)
    test[2, 8:16, 40:48] = (255, 0, 255)
    model = sj.fit(train, config, backbone, batch_size=2, progress=False)
    assert model.backbone_name == "resnet18" and model.weights_sha256 == backbone.weights_sha256
    maps, scores = model.score(test, batch_size=2, progress=False)  # last batch padded
    assert maps.shape == (3, 64, 64) and maps.dtype == np.float32 and scores.shape == (3,)
    # Batching changes nothing: one pass over all features gives the same answer.
    direct = module.scorer.score_features(module.fit_features(backbone(train), config), backbone(test))
    np.testing.assert_allclose(maps, np.asarray(direct[0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores, np.asarray(direct[1]), rtol=1e-5, atol=1e-5)
    timings: dict[str, float] = {}
    staged = model.score(test, batch_size=2, timings=timings, progress=False)
    np.testing.assert_allclose(staged[0], maps, rtol=1e-5, atol=1e-5)
    assert set(timings) == {"backbone", "matching", "maps"} and min(timings.values()) > 0
    peak = np.unravel_index(int(np.argmax(maps[2])), maps[2].shape)
    assert 4 <= peak[0] < 20 and 36 <= peak[1] < 52, peak
    assert config.to_dict()["method"] == method
    with pytest.raises(ValueError, match=r"images: expected images of shape \(B, 64, 64, 3\)"):
        model.score(test[:, :32], progress=False)
    # A jitted pure scorer composes with the backbone's pure function.
    apply_fn, params = backbone.pure()
    pure_maps, _ = jax.jit(module.scorer.score_images, static_argnums=1)(model, apply_fn, params, test)
    np.testing.assert_allclose(np.asarray(pure_maps), maps, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["patchcore", "spade"])
def test_scoring_images_checks_the_backbone(method):
    module = methods.get(method)
    config_cls = module.config_cls
    config = config_cls(backbone="resnet18", image_size=64, levels=(2, 3))
    images = textured_images(2, seed=70)
    unknown = module.fit_features(BlockMeanBackbone()(images), config)
    with pytest.raises(ValueError, match="records no weights_sha256"):
        unknown.score(images, progress=False)
    model = sj.fit(images, config, BlockMeanBackbone(), progress=False)
    with pytest.raises(ValueError, match="weights differ"):
        model.score(images, backbone=BlockMeanBackbone(gain=2.0), progress=False)
    with pytest.raises(ValueError, match="config.backbone is 'resnet18'"):
        sj.fit(images, config, BlockMeanBackbone(name="resnet50"), progress=False)


# --- configuration ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config_cls", "field", "value"),
    [
        (PatchCoreConfig, "levels", ()),
        (PatchCoreConfig, "levels", (2, 5)),
        (PatchCoreConfig, "levels", "23"),
        (PatchCoreConfig, "coreset_ratio", 0.0),
        (PatchCoreConfig, "coreset_ratio", 1.5),
        (PatchCoreConfig, "projection_dim", 0),
        (PatchCoreConfig, "num_neighbors", 0),
        (PatchCoreConfig, "reweight", "yes"),
        (PatchCoreConfig, "seed", 1.5),
        (PatchCoreConfig, "sigma", -1.0),
        (PatchCoreConfig, "image_size", 16),
        (PatchCoreConfig, "crop", 300),
        (PatchCoreConfig, "backbone", "vgg16"),
        (PatchCoreConfig, "query_chunk", 0),
        (SpadeConfig, "top_k_images", 0),
        (SpadeConfig, "levels", (1, 1)),
        (SpadeConfig, "bank_chunk", -4),
        (SpadeConfig, "sigma", float("nan")),
    ],
)
def test_config_validation_names_the_field(config_cls, field, value):
    with pytest.raises(ValueError, match=f"^{config_cls.__name__}.{field}: expected"):
        config_cls(**{field: value})


def test_configs_are_frozen_hashable_and_have_paper_defaults():
    pc, sp = PatchCoreConfig(), SpadeConfig()
    assert (pc.levels, pc.coreset_ratio, pc.projection_dim, pc.num_neighbors, pc.sigma) == (
        (2, 3),
        0.1,
        128,
        9,
        4.0,
    )
    assert (sp.levels, sp.top_k_images, sp.sigma) == ((1, 2, 3), 50, 4.0)
    assert PatchCoreConfig(crop=224).output_size == 224
    assert PatchCoreConfig(levels=[3, 2]).levels == (2, 3) and SpadeConfig(levels=2).levels == (2,)
    assert hash(pc) == hash(PatchCoreConfig()) and hash(sp) == hash(SpadeConfig())
    with pytest.raises(dataclasses.FrozenInstanceError):
        pc.sigma = 2.0  # type: ignore[misc]


def test_config_dict_round_trip_and_errors():
    pc = PatchCoreConfig(crop=224, reweight=True, projection_dim=None)
    data = json.loads(json.dumps(pc.to_dict()))
    assert data["method"] == "patchcore" and data["levels"] == [2, 3]
    assert PatchCoreConfig.from_dict(data) == pc
    assert SpadeConfig.from_dict(SpadeConfig(top_k_images=5).to_dict()) == SpadeConfig(top_k_images=5)
    with pytest.raises(ValueError, match="method is 'patchcore', expected 'spade'"):
        SpadeConfig.from_dict(data)
    with pytest.raises(ValueError, match=r"unknown keys \['lam'\]"):
        PatchCoreConfig.from_dict({"lam": 3})


def test_fit_features_rejects_the_wrong_config_type():
    with pytest.raises(ValueError, match="config: expected a PatchCoreConfig"):
        patchcore.fit_features({}, SpadeConfig())
    with pytest.raises(ValueError, match="config: expected a SpadeConfig"):
        spade.fit_features({}, PatchCoreConfig())


# --- end to end with real CNN features ----------------------------------------------------------------------


@pytest.mark.parametrize("method", ["patchcore", "spade"])
def test_real_backbone_localizes_synthetic_defects(method):
    module = methods.get(method)
    config_cls = module.config_cls
    train, test = synthetic.generate("shape", n_train=12, n_test=8, image_size=128, seed=0)
    backbone = backbones.load("efficientnet_lite0")
    config = config_cls(backbone="efficientnet_lite0", image_size=128)
    model = sj.fit(train.images, config, backbone, batch_size=4, progress=False)
    maps, scores = model.score(test.images, batch_size=4, progress=False)
    assert maps.shape == (8, 128, 128) and np.isfinite(maps).all()
    assert metrics.pixel_auroc(maps, test.masks) > 0.9
    assert metrics.image_auroc(scores, test.labels) > 0.7
