"""Channel projections, the k-center coreset and local aggregation (``subspace_jax.ops``) against
independent numpy, scipy and sklearn references."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import scipy.ndimage
from sklearn.decomposition import PCA

from subspace_jax.ops.aggregation import aggregate
from subspace_jax.ops.kcenter import kcenter
from subspace_jax.ops.projection import pca_projection, random_projection


def _features(seed=0, n=6, h=4, w=5, c=9):
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((c, c)) * np.linspace(3.0, 0.1, c)[:, None]
    return (rng.standard_normal((n, h, w, c)) @ mixing + 2.0).astype(np.float32)


def test_pca_projection_spans_the_same_subspace_as_sklearn_pca():
    feats = _features()
    proj = pca_projection(feats, 4)
    assert proj.shape == (9, 4) and proj.dtype == np.float32
    np.testing.assert_allclose(proj.T @ proj, np.eye(4), atol=1e-5)
    reference = PCA(n_components=4).fit(feats.reshape(-1, 9)).components_.T  # (c, 4)
    # Principal directions are defined up to sign: compare the projectors.
    np.testing.assert_allclose(proj @ proj.T, reference @ reference.T, atol=1e-4)


def test_pca_projection_with_svd_of_centred_pixels():
    feats = _features(seed=1, c=6)
    flat = feats.reshape(-1, 6).astype(np.float64)
    _, _, vt = np.linalg.svd(flat - flat.mean(axis=0), full_matrices=False)
    proj = pca_projection(feats, 2)
    np.testing.assert_allclose(proj @ proj.T, vt[:2].T @ vt[:2], atol=1e-4)


def test_random_projection_is_seeded_and_scaled():
    key = jax.random.key(1)
    a, b = np.asarray(random_projection(key, 300, 50)), np.asarray(random_projection(key, 300, 50))
    assert a.shape == (300, 50) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, np.asarray(random_projection(jax.random.key(2), 300, 50)))
    np.testing.assert_allclose(np.var(a), 1 / 50, rtol=0.1)


def _kcenter_reference(points, m, start=0):
    # Written from the definition: the next center maximises the distance to its nearest chosen center.
    chosen = [start]
    while len(chosen) < m:
        best, best_d = None, -1.0
        for i in range(len(points)):
            d = min(float(np.sum((points[i] - points[j]) ** 2)) for j in chosen)
            if d > best_d:
                best, best_d = i, d
        chosen.append(best)
    return chosen


def test_kcenter_matches_a_direct_greedy_reference():
    points = np.random.default_rng(3).standard_normal((40, 7))
    for m in (1, 5, 17):
        picked = kcenter(points, m)
        assert picked.shape == (m,) and picked.dtype == np.int32
        assert picked.tolist() == _kcenter_reference(points, m)
    # PatchCore starts from a drawn row: the same greedy rule from there.
    assert kcenter(points, 9, start=13).tolist() == _kcenter_reference(points, 9, start=13)


def test_kcenter_breaks_ties_at_the_lowest_index():
    # The 3 x 3 grid around the origin (mean 0, small integers: every distance exact in float32) is
    # full of ties: from the centre, the four corners are equally far.
    grid = np.array([(x, y) for x in (-1, 0, 1) for y in (-1, 0, 1)], float)
    picked = kcenter(grid, 9, start=4).tolist()
    assert picked[:2] == [4, 0]
    assert picked == _kcenter_reference(grid, 9, start=4)


def test_kcenter_picks_every_cluster_first():
    centres = np.array([[0, 0], [100, 0], [0, 100]], float)
    rng = np.random.default_rng(0)
    points = np.concatenate([c + rng.standard_normal((5, 2)) for c in centres])
    picked = kcenter(points, 3)
    assert sorted(p // 5 for p in picked) == [0, 1, 2]


@pytest.mark.parametrize("bad", [0, 10, 2.5])
def test_bad_sizes_raise(bad):
    with pytest.raises(ValueError, match="channels"):
        pca_projection(_features(c=9), bad)
    with pytest.raises(ValueError, match="m"):
        kcenter(np.zeros((9, 2)), bad)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_aggregate_is_the_mean_over_the_window_inside_the_map(size):
    feats = _features(seed=4, n=2, h=6, w=7, c=3)
    # Reference: scipy's box filter with zeros outside, divided by the box filter of ones (the count).
    box = [1, size, size, 1]
    total = scipy.ndimage.uniform_filter(feats.astype(np.float64), box, mode="constant") * size**2
    count = scipy.ndimage.uniform_filter(np.ones((1, 6, 7, 1)), box, mode="constant") * size**2
    np.testing.assert_allclose(np.asarray(aggregate(feats, size)), total / count, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_aggregate_with_padding_counted_divides_by_the_full_window(size):
    feats = _features(seed=5, n=2, h=6, w=7, c=3)
    # PatchCore's local average (torch avg_pool2d with count_include_pad=True): zeros outside the map
    # count, so it is scipy's box filter with zero padding, not divided by the count inside.
    box = [1, size, size, 1]
    reference = scipy.ndimage.uniform_filter(feats.astype(np.float64), box, mode="constant")
    ours = np.asarray(aggregate(feats, size, include_padding=True))
    np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bad", [0, 2, 3.0])
def test_aggregate_rejects_even_sizes(bad):
    with pytest.raises(ValueError, match="size"):
        aggregate(np.zeros((1, 4, 4, 2), np.float32), bad)
