"""Image-mode reconstruction with sampling: ``image_pursuit`` (gathered candidate rows for λ <= N/2,
the whole bank with a mask above) equals the pursuit on the whole bank with the non-candidates masked
out (the implementation before gathering, written out here as the reference), and sklearn's
``orthogonal_mp`` on the candidate sub-dictionary."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import orthogonal_mp

import subspace_jax as sj
from subspace_jax.methods.subspace import pursuit
from subspace_jax.ops import omp as omp_lib

N_TRAIN, DIM, BATCH, LAM, K = 40, 96, 5, 12, 4  # 2·LAM <= N_TRAIN: the gathered path


def masked_reference(atoms, gram, targets, candidates, cfg):
    """Correlations against all N rows, pursuit restricted to the candidates by a (B, N) mask."""
    indices, valid = np.asarray(candidates.indices), np.asarray(candidates.valid)
    mask = np.zeros((targets.shape[0], atoms.shape[0]), bool)
    for b in range(targets.shape[0]):
        mask[b, indices[b][valid[b]]] = True
    atoms = jnp.asarray(atoms, jnp.float32)
    alpha = jnp.matmul(targets, atoms.T, precision="highest")
    result = omp_lib.omp_gram(
        gram,
        alpha,
        cfg.k,
        candidates=jnp.asarray(mask),
        tol=cfg.tol,
        target_norm_sq=jnp.sum(targets * targets, axis=-1),
        normalize_selection=cfg.normalize_selection,
    )
    return result, targets - omp_lib.reconstruct(result.support, result.coef, atoms)


def random_case(seed: int, lam: int = LAM):
    """Bank (N, d), targets (B, d), per-image candidates with unused (-1 -> invalid) slots, in no order."""
    rng = np.random.default_rng(seed)
    atoms = rng.normal(size=(N_TRAIN, DIM)).astype(np.float32)
    targets = rng.normal(size=(BATCH, DIM)).astype(np.float32)
    support = np.stack([rng.permutation(N_TRAIN)[:lam] for _ in range(BATCH)]).astype(np.int32)
    support[1, -3:] = -1  # a sampling pursuit that stopped after LAM - 3 atoms
    support[3, K:] = -1  # exactly K candidates left
    candidates = pursuit.Candidates(jnp.asarray(np.maximum(support, 0)), jnp.asarray(support >= 0))
    gram = jnp.asarray(atoms.astype(np.float64) @ atoms.T.astype(np.float64), jnp.float32)
    return atoms, gram, jnp.asarray(targets), candidates, support


@pytest.mark.parametrize(
    ("normalize_selection", "tol", "lam"),
    [
        (False, 0.0, LAM),
        (True, 0.0, LAM),
        (False, 0.5, LAM),
        (True, 0.5, LAM),
        (False, 0.0, 25),
        (True, 0.5, 25),
    ],
)
def test_pursuit_on_the_candidates_matches_the_masked_whole_bank_pursuit(normalize_selection, tol, lam):
    atoms, gram, targets, candidates, support = random_case(int(normalize_selection) + 2 * int(tol > 0), lam)
    cfg = sj.Config(
        backbone="efficientnet_lite0",
        sampling="random",
        lam=lam,
        k=K,
        tol=tol,
        normalize_selection=normalize_selection,
    )
    result, residual = pursuit._full_float32(pursuit.image_pursuit)(atoms, gram, targets, candidates, cfg)
    expected, expected_residual = masked_reference(atoms, gram, targets, candidates, cfg)
    np.testing.assert_array_equal(np.asarray(result.support), np.asarray(expected.support))
    np.testing.assert_array_equal(np.asarray(result.n_atoms), np.asarray(expected.n_atoms))
    np.testing.assert_allclose(np.asarray(result.coef), np.asarray(expected.coef), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(residual), np.asarray(expected_residual), rtol=1e-4, atol=1e-4)
    chosen = np.asarray(result.support)
    for b in range(BATCH):  # every chosen atom is a valid candidate, never a masked slot
        used = chosen[b][chosen[b] >= 0]
        assert set(used.tolist()) <= set(support[b][support[b] >= 0].tolist())
    if tol == 0.0 and not normalize_selection:
        for b in range(BATCH):  # and the pursuit is sklearn's on the candidate sub-dictionary
            sub = np.sort(support[b][support[b] >= 0])
            coef = orthogonal_mp(
                atoms[sub].T.astype(np.float64), np.asarray(targets[b], np.float64), n_nonzero_coefs=K
            )
            assert set(sub[np.flatnonzero(coef)].tolist()) == set(chosen[b][chosen[b] >= 0].tolist())


@pytest.mark.parametrize("bank_dtype", ["float32", "bfloat16"])
def test_subspace_sampling_maps_match_the_masked_reference(bank_dtype):
    rng = np.random.default_rng(5)
    shapes = {"level2": (6, 6, 8), "level3": (3, 3, 16), "pooled": (32,)}
    bank = {key: rng.normal(size=(N_TRAIN, *shape)).astype(np.float32) for key, shape in shapes.items()}
    test = {key: rng.normal(size=(BATCH, *shape)).astype(np.float32) for key, shape in shapes.items()}
    for b in (0, 2):  # pooled vectors in the span of 3 training images: the sampling pursuit stops at 3
        test["pooled"][b] = rng.normal(size=3).astype(np.float32) @ bank["pooled"][[4 + b, 17, 30 - b]]
    cfg = sj.Config(
        backbone="efficientnet_lite0",
        image_size=32,
        levels=(2, 3),
        sampling_level="pooled",
        sampling="subspace",
        lam=LAM,
        k=K,
        tol=0.05,
        sigma=0.0,
        bank_dtype=bank_dtype,
    )
    model = sj.fit_features(bank, cfg)
    candidates = pursuit.sample_candidates(model, test)
    assert not np.asarray(candidates.valid).all()  # tol stopped some sampling pursuits early: -1 slots
    maps = pursuit.reconstruct_levels(model, test, candidates)
    for key in ("level2", "level3"):
        atoms = np.asarray(model.banks[key].astype(jnp.float32)).reshape(N_TRAIN, -1)
        target = jnp.asarray(test[key].reshape(BATCH, -1))
        _, residual = masked_reference(atoms, model.grams[key], target, candidates, cfg)
        expected = np.linalg.norm(np.asarray(residual).reshape(BATCH, *shapes[key]), axis=-1)
        np.testing.assert_allclose(np.asarray(maps[key]), expected, rtol=1e-4, atol=1e-4)


def test_sampling_none_keeps_the_whole_bank_path():
    atoms, gram, targets, _, _ = random_case(seed=9)
    cfg = sj.Config(backbone="efficientnet_lite0", sampling="none", k=K)
    everyone = pursuit.Candidates(
        jnp.broadcast_to(jnp.arange(N_TRAIN, dtype=jnp.int32), (BATCH, N_TRAIN)),
        jnp.ones((BATCH, N_TRAIN), bool),
    )
    result, residual = pursuit._full_float32(pursuit.image_pursuit)(atoms, gram, targets, everyone, cfg)
    for b in range(BATCH):
        coef = orthogonal_mp(
            atoms.T.astype(np.float64), np.asarray(targets[b], np.float64), n_nonzero_coefs=K
        )
        assert set(np.flatnonzero(coef).tolist()) == set(np.asarray(result.support)[b].tolist())
        np.testing.assert_allclose(np.asarray(residual[b]), targets[b] - atoms.T @ coef, rtol=1e-4, atol=1e-4)
