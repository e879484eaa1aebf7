"""OMP kernels against scikit-learn's orthogonal_mp / orthogonal_mp_gram and least-squares references."""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import orthogonal_mp, orthogonal_mp_gram

from subspace_jax.ops.omp import OMPResult, omp, omp_gram, reconstruct, residual

SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def random_problem(seed: int, n_atoms: int, dim: int, batch: int, dtype=np.float64):
    rng = np.random.default_rng(seed)
    atoms = rng.standard_normal((n_atoms, dim)) * rng.uniform(0.5, 2.0, (n_atoms, 1))
    targets = rng.standard_normal((batch, dim))
    return atoms.astype(dtype), targets.astype(dtype)


def sklearn_paths(coef_path: np.ndarray) -> list[list[int]]:
    """Selection order per target from sklearn's return_path output (M, B, steps)."""
    orders = []
    for b in range(coef_path.shape[1]):
        order: list[int] = []
        for step in range(coef_path.shape[2]):
            new = set(np.flatnonzero(coef_path[:, b, step])) - set(order)
            if not new:
                break
            (index,) = new
            order.append(int(index))
        orders.append(order)
    return orders


def dense_coef(result: OMPResult, n_atoms: int) -> np.ndarray:
    support, coef = np.asarray(result.support), np.asarray(result.coef)
    dense = np.zeros((support.shape[0], n_atoms), coef.dtype)
    for b in range(support.shape[0]):
        used = support[b] >= 0
        dense[b, support[b][used]] = coef[b][used]
    return dense


def used_support(result: OMPResult, b: int) -> list[int]:
    support = np.asarray(result.support[b])
    return [int(i) for i in support[support >= 0]]


def assert_matches_sklearn(result: OMPResult, atoms, targets, sk_dense, sk_orders, rtol):
    n_atoms = atoms.shape[0]
    sk_residual_sq = np.sum((targets - sk_dense.T @ atoms) ** 2, axis=1)
    for b in range(targets.shape[0]):
        assert used_support(result, b) == sk_orders[b]
        assert int(result.n_atoms[b]) == len(sk_orders[b])
    np.testing.assert_allclose(
        dense_coef(result, n_atoms), sk_dense.T, rtol=rtol, atol=rtol * np.abs(sk_dense).max()
    )
    np.testing.assert_allclose(np.asarray(result.residual_norm_sq), sk_residual_sq, rtol=rtol)


def sklearn_plain(atoms, targets, k):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a premature sklearn stop would void the comparison
        path = orthogonal_mp(atoms.T, targets.T, n_nonzero_coefs=k, return_path=True)
        dense = orthogonal_mp(atoms.T, targets.T, n_nonzero_coefs=k)
    path = path.reshape(atoms.shape[0], targets.shape[0], -1)
    return dense.reshape(atoms.shape[0], targets.shape[0]), sklearn_paths(path)


def sklearn_gram(gram, alpha, k, tol=None, norms_sq=None):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        kwargs = dict(n_nonzero_coefs=k, tol=tol, norms_squared=norms_sq)
        path = orthogonal_mp_gram(gram, alpha.T, return_path=True, **kwargs)
        dense = orthogonal_mp_gram(gram, alpha.T, **kwargs)
    n_atoms, batch = alpha.shape[1], alpha.shape[0]
    return dense.reshape(n_atoms, batch), sklearn_paths(path.reshape(n_atoms, batch, -1))


@st.composite
def problem_sizes(draw):
    """(seed, M, d, B, k): k <= d / 2 keeps the chosen atoms well conditioned, as the comparison needs."""
    n_atoms, dim = draw(st.integers(5, 400)), draw(st.integers(8, 4096))
    k = draw(st.integers(1, min(n_atoms, 20, dim // 2)))
    return draw(st.integers(0, 2**31 - 1)), n_atoms, dim, draw(st.integers(1, 3)), k


@SETTINGS
@given(problem_sizes())
def test_omp_matches_sklearn_orthogonal_mp(sizes):
    seed, n_atoms, dim, batch, k = sizes
    with jax.enable_x64(True):
        atoms, targets = random_problem(seed, n_atoms, dim, batch)
        result = omp(atoms, targets, k)
        sk_dense, sk_orders = sklearn_plain(atoms, targets, k)
        assert_matches_sklearn(result, atoms, targets, sk_dense, sk_orders, rtol=1e-6)


@SETTINGS
@given(problem_sizes())
def test_omp_gram_matches_sklearn_orthogonal_mp_gram(sizes):
    seed, n_atoms, dim, batch, k = sizes
    with jax.enable_x64(True):
        atoms, targets = random_problem(seed, n_atoms, dim, batch)
        gram, alpha = atoms @ atoms.T, targets @ atoms.T
        result = omp_gram(gram, alpha, k, target_norm_sq=np.sum(targets**2, axis=1))
        sk_dense, sk_orders = sklearn_gram(gram, alpha, k)
        # also checks that the Gram-based residual norm equals the true one (sklearn's coefficients)
        assert_matches_sklearn(result, atoms, targets, sk_dense, sk_orders, rtol=1e-6)


def test_float32_kernels_agree_with_float64_sklearn():
    atoms, targets = random_problem(3, 120, 2000, 6)
    k = 12
    sk_dense, sk_orders = sklearn_plain(atoms, targets, k)
    a32, t32 = atoms.astype(np.float32), targets.astype(np.float32)
    for result in (omp(a32, t32, k), omp_gram(a32 @ a32.T, t32 @ a32.T, k, target_norm_sq=np.sum(t32**2, 1))):
        assert result.coef.dtype == jnp.float32 and result.support.dtype == jnp.int32
        assert_matches_sklearn(result, atoms, targets, sk_dense, sk_orders, rtol=2e-3)


@pytest.mark.parametrize("relative_tol", [0.3, 0.05])
def test_tolerance_stop_matches_sklearn_absolute_tol(x64, relative_tol):
    atoms, targets = random_problem(5, 40, 24, 5)  # overcomplete: every tolerance is reachable
    norms_sq = np.sum(targets**2, axis=1)
    gram, alpha = atoms @ atoms.T, targets @ atoms.T
    n_atoms = atoms.shape[0]
    # sklearn's tol is an absolute squared residual and replaces n_nonzero_coefs, so compare with
    # k = M, one target at a time (each has its own absolute threshold).
    for b in range(targets.shape[0]):
        absolute = relative_tol * norms_sq[b]
        sk_dense, sk_orders = sklearn_gram(
            gram, alpha[b : b + 1], None, tol=absolute, norms_sq=norms_sq[b : b + 1]
        )
        plain_sk = orthogonal_mp(atoms.T, targets[b], tol=absolute)
        np.testing.assert_allclose(plain_sk, sk_dense[:, 0], rtol=1e-6, atol=1e-9)
        for result in (
            omp(atoms, targets[b : b + 1], n_atoms, tol=relative_tol),
            omp_gram(gram, alpha[b : b + 1], n_atoms, tol=relative_tol, target_norm_sq=norms_sq[b : b + 1]),
        ):
            assert_matches_sklearn(result, atoms, targets[b : b + 1], sk_dense, sk_orders, rtol=1e-6)
            assert float(result.residual_norm_sq[0]) <= absolute
            assert len(sk_orders[0]) < n_atoms  # the tolerance, not k, stopped it


def test_tolerance_and_k_together(x64):
    atoms, targets = random_problem(6, 40, 24, 4)
    norms_sq = np.sum(targets**2, axis=1)
    loose = omp(atoms, targets, 3, tol=1e-6)  # k binds first
    assert np.all(np.asarray(loose.n_atoms) == 3)
    assert np.all(np.asarray(loose.residual_norm_sq) > 1e-6 * norms_sq)
    tight = omp_gram(atoms @ atoms.T, targets @ atoms.T, 40, tol=0.5, target_norm_sq=norms_sq)
    n = np.asarray(tight.n_atoms)
    assert np.all(np.asarray(tight.residual_norm_sq) <= 0.5 * norms_sq)
    for b in range(4):
        chosen = used_support(tight, b)
        assert len(chosen) == n[b] >= 1
        # it stopped as soon as it could: one atom fewer leaves a least-squares residual above the tolerance
        fewer = atoms[chosen[:-1]].T
        coef = np.linalg.lstsq(fewer, targets[b], rcond=None)[0] if len(chosen) > 1 else np.zeros(0)
        assert np.sum((targets[b] - fewer @ coef) ** 2) > 0.5 * norms_sq[b]


def test_target_already_within_tolerance_uses_no_atom(x64):
    atoms, targets = random_problem(7, 10, 20, 2)
    result = omp(atoms, targets, 4, tol=1.0)
    assert np.all(np.asarray(result.n_atoms) == 0)
    np.testing.assert_array_equal(result.coef, 0)
    np.testing.assert_allclose(result.residual_norm_sq, np.sum(targets**2, axis=1))


@pytest.mark.parametrize("per_target", [False, True])
def test_candidate_masks_match_sklearn_on_the_sub_dictionary(x64, per_target):
    atoms, targets = random_problem(8, 60, 200, 3)
    rng = np.random.default_rng(0)
    masks = rng.random((3, 60)) < 0.5
    if not per_target:
        masks[:] = masks[0]
    candidates = masks if per_target else masks[0]
    gram, alpha = atoms @ atoms.T, targets @ atoms.T
    k = 8
    results = (
        omp(atoms, targets, k, candidates=candidates),
        omp_gram(gram, alpha, k, candidates=candidates, target_norm_sq=np.sum(targets**2, 1)),
    )
    for b in range(3):
        allowed = np.flatnonzero(masks[b])
        sub_dense, sub_orders = sklearn_plain(atoms[allowed], targets[b : b + 1], k)
        for result in results:
            assert set(used_support(result, b)) <= set(allowed)
            assert used_support(result, b) == [int(allowed[i]) for i in sub_orders[0]]
            np.testing.assert_allclose(dense_coef(result, 60)[b, allowed], sub_dense[:, 0], rtol=1e-6)


def test_everything_masked_gives_zero_code_and_residual_equal_to_target():
    atoms, targets = random_problem(9, 20, 50, 4, np.float32)
    nothing = np.zeros(20, bool)
    for result in (
        omp(atoms, targets, 5, candidates=nothing),
        omp_gram(
            atoms @ atoms.T,
            targets @ atoms.T,
            5,
            candidates=np.zeros((4, 20), bool),
            target_norm_sq=np.sum(targets**2, 1),
        ),
    ):
        np.testing.assert_array_equal(result.support, -1)
        np.testing.assert_array_equal(result.coef, 0)
        np.testing.assert_array_equal(result.n_atoms, 0)
        np.testing.assert_allclose(result.residual_norm_sq, np.sum(targets**2, 1), rtol=1e-6)
        np.testing.assert_array_equal(residual(result.support, result.coef, atoms, targets), targets)


def test_k_larger_than_the_candidates(x64):
    atoms, targets = random_problem(10, 12, 40, 3)
    candidates = np.zeros(12, bool)
    candidates[[1, 5, 7]] = True
    for result in (
        omp(atoms, targets, 7, candidates=candidates),
        omp_gram(atoms @ atoms.T, targets @ atoms.T, 7, candidates=candidates),
    ):
        np.testing.assert_array_equal(result.n_atoms, 3)
        support = np.asarray(result.support)
        np.testing.assert_array_equal(np.sort(support[:, :3], axis=1), [[1, 5, 7]] * 3)
        np.testing.assert_array_equal(support[:, 3:], -1)
        least_squares = np.linalg.lstsq(atoms[[1, 5, 7]].T, targets.T, rcond=None)[0].T
        np.testing.assert_allclose(dense_coef(result, 12)[:, [1, 5, 7]], least_squares, rtol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_duplicate_and_zero_atoms(dtype):
    with jax.enable_x64(dtype == np.float64):
        rng = np.random.default_rng(11)
        base = rng.standard_normal((6, 30))
        # atoms 0..5 independent, 6..8 duplicate 0, 2, 4, atoms 9 and 10 are zero
        atoms = np.concatenate([base, base[[0, 2, 4]], np.zeros((2, 30))]).astype(dtype)
        # targets in the span of atoms 0, 2 and 4 (so the duplicates tie with their originals), plus noise
        targets = (
            rng.standard_normal((5, 3)) @ base[[0, 2, 4]] + 0.01 * rng.standard_normal((5, 30))
        ).astype(dtype)
        gram, alpha = atoms @ atoms.T, targets @ atoms.T
        for normalize in (False, True):
            for result in (
                omp(atoms, targets, 11, normalize_selection=normalize),
                omp_gram(
                    gram, alpha, 11, target_norm_sq=np.sum(targets**2, 1), normalize_selection=normalize
                ),
            ):
                assert np.all(np.isfinite(np.asarray(result.coef)))
                assert np.all(np.isfinite(np.asarray(result.residual_norm_sq)))
                for b in range(5):
                    chosen = used_support(result, b)
                    assert len(chosen) == len(set(chosen)) == int(result.n_atoms[b])
                    assert not {9, 10} & set(chosen)
                    originals = {i if i < 6 else [0, 2, 4][i - 6] for i in chosen}
                    assert len(originals) == len(chosen)  # never an atom and its duplicate
                    assert len(chosen) == 6  # the span is 6-dimensional: one copy of every direction
                    least_squares = np.linalg.lstsq(
                        atoms[chosen].T.astype(np.float64), targets[b], rcond=None
                    )[0]
                    np.testing.assert_allclose(
                        np.asarray(result.coef[b, :6]),
                        least_squares,
                        rtol=2e-3 if dtype == np.float32 else 1e-9,
                        atol=1e-4,
                    )
                true_residual = residual(result.support, result.coef, atoms, targets)
                np.testing.assert_allclose(
                    np.sum(np.asarray(true_residual, np.float64) ** 2, 1),
                    result.residual_norm_sq,
                    rtol=2e-2 if dtype == np.float32 else 1e-8,
                )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_zero_targets(dtype):
    with jax.enable_x64(dtype == np.float64):
        atoms, targets = random_problem(12, 15, 25, 3, dtype)
        targets[1] = 0
        gram, alpha = atoms @ atoms.T, targets @ atoms.T
        for result in (
            omp(atoms, targets, 5),
            omp_gram(gram, alpha, 5, target_norm_sq=np.sum(targets**2, 1)),
        ):
            assert np.all(np.isfinite(np.asarray(result.coef)))
            assert int(result.n_atoms[1]) == 0
            np.testing.assert_array_equal(result.support[1], -1)
            np.testing.assert_array_equal(result.coef[1], 0)
            assert float(result.residual_norm_sq[1]) == 0.0
            np.testing.assert_array_equal(np.asarray(result.n_atoms)[[0, 2]], 5)
        assert np.all(np.asarray(omp_gram(gram, alpha, 5).n_atoms)[1] == 0)


def test_normalize_selection_matches_sklearn_on_unit_atoms(x64):
    atoms, targets = random_problem(13, 50, 120, 3)
    atoms *= np.random.default_rng(1).uniform(0.1, 10.0, (50, 1))  # very unequal norms
    norms = np.linalg.norm(atoms, axis=1)
    unit_dense, unit_orders = sklearn_plain(atoms / norms[:, None], targets, 6)
    plain_dense, plain_orders = sklearn_plain(atoms, targets, 6)
    assert unit_orders != plain_orders  # the option changes the choice on these atoms
    gram, alpha = atoms @ atoms.T, targets @ atoms.T
    for result in (
        omp(atoms, targets, 6, normalize_selection=True),
        omp_gram(gram, alpha, 6, normalize_selection=True),
    ):
        for b in range(3):
            assert used_support(result, b) == unit_orders[b]
        # the fit uses the raw atoms: coefficients rescale by the norms
        np.testing.assert_allclose(
            dense_coef(result, 50), (unit_dense / norms[:, None]).T, rtol=1e-6, atol=1e-12
        )


def test_jit_equals_eager():
    atoms, targets = random_problem(14, 40, 64, 5, np.float32)
    gram, alpha, norms_sq = atoms @ atoms.T, targets @ atoms.T, np.sum(targets**2, 1)
    mask = np.random.default_rng(2).random((5, 40)) < 0.7
    jit_gram = jax.jit(omp_gram, static_argnames=("k", "normalize_selection"))
    jit_plain = jax.jit(omp, static_argnames=("k", "normalize_selection"))
    pairs = [
        (
            omp_gram(gram, alpha, 6, candidates=mask, tol=0.1, target_norm_sq=norms_sq),
            jit_gram(gram, alpha, k=6, candidates=mask, tol=0.1, target_norm_sq=norms_sq),
        ),
        (
            omp(atoms, targets, 6, candidates=mask, tol=0.1),
            jit_plain(atoms, targets, k=6, candidates=mask, tol=0.1),
        ),
    ]
    for eager, jitted in pairs:
        for a, b in zip(eager, jitted):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_batch_equals_loop_and_vmap_over_images(x64):
    atoms, targets = random_problem(15, 30, 50, 6)
    gram, alpha, norms_sq = atoms @ atoms.T, targets @ atoms.T, np.sum(targets**2, 1)
    mask = np.random.default_rng(3).random((6, 30)) < 0.8
    batch_gram = omp_gram(gram, alpha, 7, candidates=mask, target_norm_sq=norms_sq)
    batch_plain = omp(atoms, targets, 7, candidates=mask)
    for b in range(6):
        one = slice(b, b + 1)
        single_gram = omp_gram(gram, alpha[one], 7, candidates=mask[one], target_norm_sq=norms_sq[one])
        single_plain = omp(atoms, targets[one], 7, candidates=mask[b])
        for batched, single in ((batch_gram, single_gram), (batch_plain, single_plain)):
            for a, s in zip(batched, single):
                np.testing.assert_allclose(np.asarray(a)[b], np.asarray(s)[0], rtol=1e-12, atol=1e-12)
    # as the model uses it: vmap over images, each with its own batch and candidate mask
    images = jax.vmap(lambda a, c, n: omp_gram(gram, a, 7, candidates=c, target_norm_sq=n))(
        alpha.reshape(2, 3, 30), mask.reshape(2, 3, 30), norms_sq.reshape(2, 3)
    )
    for a, s in zip(images, batch_gram):
        np.testing.assert_allclose(np.asarray(a).reshape(np.shape(s)), s, rtol=1e-12, atol=1e-12)
    # and per-pixel: vmap over positions with per-position atoms
    pixel_atoms = np.stack([atoms, atoms[::-1]])
    pixels = jax.vmap(lambda a, t: omp(a, t, 7))(pixel_atoms, targets.reshape(2, 3, 50))
    for p in range(2):
        direct = omp(pixel_atoms[p], targets[3 * p : 3 * p + 3], 7)
        np.testing.assert_array_equal(pixels.support[p], direct.support)
        np.testing.assert_allclose(pixels.coef[p], direct.coef, rtol=1e-12)


@pytest.mark.parametrize("normalize", [False, True])
def test_omp_and_omp_gram_agree(x64, normalize):
    atoms, targets = random_problem(16, 200, 300, 8)
    mask = np.random.default_rng(4).random(200) < 0.9
    norms_sq = np.sum(targets**2, 1)
    plain = omp(atoms, targets, 15, candidates=mask, tol=0.2, normalize_selection=normalize)
    gram = omp_gram(
        atoms @ atoms.T,
        targets @ atoms.T,
        15,
        candidates=mask,
        tol=0.2,
        target_norm_sq=norms_sq,
        normalize_selection=normalize,
    )
    np.testing.assert_array_equal(plain.support, gram.support)
    np.testing.assert_array_equal(plain.n_atoms, gram.n_atoms)
    np.testing.assert_allclose(plain.coef, gram.coef, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(plain.residual_norm_sq, gram.residual_norm_sq, rtol=1e-8)


def test_reconstruct_against_hand_computed_sum():
    atoms = np.arange(12, dtype=np.float32).reshape(4, 3)
    support = np.array([[2, 0, -1], [-1, -1, -1], [3, 3 - 3, 1]], np.int32)
    coef = np.array([[2.0, -1.0, 5.0], [7.0, 7.0, 7.0], [1.0, 0.5, -2.0]], np.float32)
    expected = np.array([2 * atoms[2] - atoms[0], np.zeros(3), atoms[3] + 0.5 * atoms[0] - 2 * atoms[1]])
    np.testing.assert_allclose(reconstruct(support, coef, atoms), expected)
    np.testing.assert_allclose(residual(support, coef, atoms, np.ones((3, 3), np.float32)), 1 - expected)


def test_omp_gram_without_norm_reports_nan_residual_and_refuses_tol():
    atoms, targets = random_problem(17, 10, 20, 2, np.float32)
    result = omp_gram(atoms @ atoms.T, targets @ atoms.T, 3)
    assert np.all(np.isnan(np.asarray(result.residual_norm_sq)))
    with pytest.raises(ValueError, match="target_norm_sq"):
        omp_gram(atoms @ atoms.T, targets @ atoms.T, 3, tol=0.1)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: omp_gram(np.ones((4, 5)), np.ones((2, 4)), 2), "gram"),
        (lambda: omp_gram(np.ones((4,)), np.ones((2, 4)), 2), "gram"),
        (lambda: omp_gram(np.ones((4, 4)), np.ones((2, 5)), 2), "alpha"),
        (lambda: omp_gram(np.ones((4, 4)), np.ones((4,)), 2), "alpha"),
        (lambda: omp_gram(np.ones((4, 4)), np.ones((2, 4)), 0), "k"),
        (lambda: omp_gram(np.ones((4, 4)), np.ones((2, 4)), 2.0), "k"),
        (lambda: omp_gram(np.ones((4, 4)), np.ones((2, 4)), 2, target_norm_sq=np.ones(3)), "target_norm_sq"),
        (
            lambda: omp_gram(np.ones((4, 4)), np.ones((2, 4)), 2, candidates=np.ones((3, 4), bool)),
            "candidates",
        ),
        (lambda: omp_gram(np.ones((4, 4)), np.ones((2, 4)), 2, tol=-1.0, target_norm_sq=np.ones(2)), "tol"),
        (lambda: omp(np.ones((4, 6)), np.ones((2, 5)), 2), "targets"),
        (lambda: omp(np.ones((4, 6, 1)), np.ones((2, 6)), 2), "atoms"),
        (lambda: omp(np.ones((4, 6)), np.ones((6,)), 2), "targets"),
        (lambda: omp(np.ones((4, 6)), np.ones((2, 6)), -3), "k"),
        (lambda: omp(np.ones((4, 6)), np.ones((2, 6)), 2, candidates=np.ones(5, bool)), "candidates"),
        (lambda: reconstruct(np.zeros((2, 3), np.int32), np.zeros((2, 4)), np.ones((4, 6))), "coef"),
        (
            lambda: residual(np.zeros((2, 3), np.int32), np.zeros((2, 3)), np.ones((4, 6)), np.ones((3, 6))),
            "targets",
        ),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call()


def test_shape_errors_are_raised_at_trace_time_under_jit():
    traced = jax.jit(lambda gram, alpha: omp_gram(gram, alpha, 3))
    with pytest.raises(ValueError, match=r"alpha: expected \(B, M\) = \(B, 4\).*got shape \(2, 5\)"):
        traced(jnp.ones((4, 4)), jnp.ones((2, 5)))
    traced_plain = jax.jit(lambda atoms, targets: omp(atoms, targets, 3))
    with pytest.raises(ValueError, match=r"targets: .*\(4, 6\).*got shape \(2, 5\)"):
        traced_plain(jnp.ones((4, 6)), jnp.ones((2, 5)))
