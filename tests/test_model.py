"""Reconstruction, sampling and batching of the scorer on synthetic feature tensors (no backbone).

References are independent of the package: sklearn's ``orthogonal_mp`` and numpy loops.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.linear_model import orthogonal_mp

import subspace_jax as sj
from subspace_jax.methods.subspace import pursuit

N_TRAIN = 12
SHAPES = {"level2": (8, 8, 6), "level3": (4, 4, 12), "pooled": (256,)}


def make_bank(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {key: rng.normal(size=(N_TRAIN, *shape)).astype(np.float32) for key, shape in SHAPES.items()}


def combine(bank: dict[str, np.ndarray], indices, weights) -> dict[str, np.ndarray]:
    """Test features that are the same linear combination of training images at every level: (1, ...)."""
    weights = np.asarray(weights, np.float32)
    return {key: np.tensordot(weights, value[list(indices)], axes=1)[None] for key, value in bank.items()}


def config(**overrides) -> sj.Config:
    base = dict(
        backbone="efficientnet_lite0",
        image_size=32,
        levels=(2,),
        sampling_level="pooled",
        sampling="none",
        lam=4,
        k=3,
        sigma=0.0,
    )
    return sj.Config(**(base | overrides))


def level_maps(model: sj.Model, features) -> dict[str, np.ndarray]:
    candidates = pursuit.sample_candidates(model, features)
    return {
        key: np.asarray(value)
        for key, value in pursuit.reconstruct_levels(model, features, candidates).items()
    }


def test_exact_combination_scores_zero_and_an_out_of_span_patch_is_found():
    bank = make_bank()
    model = sj.fit_features(bank, config(levels=(2, 3), sampling="none", k=3))
    clean = combine(bank, [1, 5, 9], [0.7, -1.2, 0.4])
    maps, scores = model.score(clean, progress=False)
    feature_scale = np.abs(clean["level2"]).max()
    assert maps.shape == (1, 32, 32) and maps.dtype == jnp.float32
    assert float(scores[0]) < 1e-4 * feature_scale

    defect = {key: value.copy() for key, value in clean.items()}
    defect["level2"][0, 2, 5] += 3.0 * np.random.default_rng(7).normal(size=6).astype(np.float32)
    maps, scores = model.score(defect, progress=False)
    row, col = np.unravel_index(int(np.argmax(maps[0])), maps.shape[1:])
    assert (row // 4, col // 4) == (2, 5)  # the level-2 pixel (2, 5) covers output block [8:12, 20:24]
    assert float(scores[0]) > 100 * 1e-4 * feature_scale


@pytest.mark.parametrize("normalize_selection", [False, True])
def test_image_mode_equals_sklearn_orthogonal_mp(normalize_selection):
    bank = make_bank(1)
    rng = np.random.default_rng(3)
    test = {key: rng.normal(size=(3, *shape)).astype(np.float32) for key, shape in SHAPES.items()}
    model = sj.fit_features(bank, config(levels=(2, 3), k=4, normalize_selection=normalize_selection))
    ours = level_maps(model, test)
    for key in ("level2", "level3"):
        atoms = bank[key].reshape(N_TRAIN, -1).astype(np.float64)
        if normalize_selection:
            # sklearn has no selection-only normalisation: pursue on unit atoms, then refit the raw
            # atoms on the chosen support (the same residual, since the span is the same).
            unit = atoms / np.linalg.norm(atoms, axis=1, keepdims=True)
        for b in range(3):
            y = test[key][b].reshape(-1).astype(np.float64)
            if normalize_selection:
                support = np.flatnonzero(orthogonal_mp(unit.T, y, n_nonzero_coefs=4))
                coef, *_ = np.linalg.lstsq(atoms[support].T, y, rcond=None)
                residual = y - atoms[support].T @ coef
            else:
                residual = y - atoms.T @ orthogonal_mp(atoms.T, y, n_nonzero_coefs=4)
            reference = np.linalg.norm(residual.reshape(SHAPES[key]), axis=-1)
            np.testing.assert_allclose(ours[key][b], reference, rtol=2e-4, atol=2e-4)


def test_subspace_sampling_recovers_the_generating_images():
    bank = make_bank(2)
    model = sj.fit_features(bank, config(levels=(2, 3), sampling="subspace", lam=5, k=3))
    generators = [2, 7, 10]
    test = combine(bank, generators, [1.0, 0.6, -0.8])
    candidates = pursuit.sample_candidates(model, test)
    chosen = set(np.asarray(candidates.indices)[0][np.asarray(candidates.valid)[0]].tolist())
    assert chosen == set(generators)  # the pursuit stops once the pooled vector is rebuilt exactly
    assert float(model.score(test, progress=False)[1][0]) < 1e-4 * np.abs(test["level2"]).max()


def test_subspace_sampling_restricts_the_reconstruction():
    bank = make_bank(3)
    # The pooled vector points at images {0, 1, 2} while the level maps combine {3, 4, 5}: with lam = 3
    # the maps cannot be rebuilt, without sampling they can.
    test = combine(bank, [3, 4, 5], [1.0, -0.5, 0.8])
    test["pooled"] = combine(bank, [0, 1, 2], [1.0, 1.0, 1.0])["pooled"]
    sampled = sj.fit_features(bank, config(sampling="subspace", lam=3, k=3))
    unsampled = sj.fit_features(bank, config(sampling="none", k=3))
    scale = np.abs(test["level2"]).max()
    assert float(sampled.score(test, progress=False)[1][0]) > 0.1 * scale
    assert float(unsampled.score(test, progress=False)[1][0]) < 1e-4 * scale


def test_random_sampling_draws_lam_images_from_the_seed_for_every_test_image():
    bank = make_bank(4)
    test = {key: np.repeat(value, 3, axis=0) for key, value in combine(bank, [0, 1], [1.0, 1.0]).items()}
    drawn = {}
    for seed in (0, 1):
        model = sj.fit_features(bank, config(sampling="random", lam=4, k=2, seed=seed))
        candidates = pursuit.sample_candidates(model, test)
        indices = np.asarray(candidates.indices)
        assert indices.shape == (3, 4) and np.asarray(candidates.valid).all()
        assert (indices == indices[0]).all() and len(set(indices[0].tolist())) == 4
        assert indices.min() >= 0 and indices.max() < N_TRAIN
        again = pursuit.sample_candidates(sj.fit_features(bank, model.config), test)
        np.testing.assert_array_equal(np.asarray(again.indices), indices)
        drawn[seed] = set(indices[0].tolist())
        # A map built from two drawn images is rebuilt exactly; one built from undrawn images is not.
        inside = combine(bank, sorted(drawn[seed])[:2], [1.0, -1.0])
        outside = combine(bank, sorted(set(range(N_TRAIN)) - drawn[seed])[:2], [1.0, -1.0])
        scale = np.abs(inside["level2"]).max()
        assert float(model.score(inside, progress=False)[1][0]) < 1e-4 * scale
        assert float(model.score(outside, progress=False)[1][0]) > 0.1 * scale
    assert len({frozenset(v) for v in drawn.values()}) > 1


def test_none_sampling_uses_every_training_image():
    bank = make_bank(5)
    model = sj.fit_features(bank, config(sampling="none", lam=2, k=3))
    assert model.sampling_bank is None
    test = combine(bank, [0, 6, 11], [0.5, 0.5, -1.0])
    candidates = pursuit.sample_candidates(model, test)
    np.testing.assert_array_equal(np.asarray(candidates.indices)[0], np.arange(N_TRAIN))
    assert float(model.score(test, progress=False)[1][0]) < 1e-4 * np.abs(test["level2"]).max()


def test_lam_at_least_n_keeps_every_image():
    bank = make_bank(5)
    model = sj.fit_features(bank, config(sampling="subspace", lam=N_TRAIN, k=3))
    candidates = pursuit.sample_candidates(model, combine(bank, [0], [1.0]))
    assert np.asarray(candidates.valid).all() and candidates.indices.shape == (1, N_TRAIN)


def pixel_mode_reference(bank_level, target, candidate_images, radius, k):
    """Per-pixel sklearn OMP on the in-image window vectors of the candidate images: (h, w)."""
    _, h, w, _ = bank_level.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            atoms = [
                bank_level[n, i + di, j + dj]
                for n in candidate_images
                for di in range(-radius, radius + 1)
                for dj in range(-radius, radius + 1)
                if 0 <= i + di < h and 0 <= j + dj < w
            ]
            atoms = np.asarray(atoms, np.float64)
            y = target[i, j].astype(np.float64)
            coef = orthogonal_mp(atoms.T, y, n_nonzero_coefs=k)
            out[i, j] = np.linalg.norm(y - atoms.T @ coef)
    return out


@pytest.mark.parametrize("radius", [0, 1])
def test_pixel_mode_equals_per_pixel_sklearn_orthogonal_mp(radius):
    rng = np.random.default_rng(6)
    bank = {
        "level2": rng.normal(size=(5, 5, 5, 8)).astype(np.float32),
        "pooled": rng.normal(size=(5, 64)).astype(np.float32),
    }
    test = {
        "level2": rng.normal(size=(2, 5, 5, 8)).astype(np.float32),
        "pooled": rng.normal(size=(2, 64)).astype(np.float32),
    }
    model = sj.fit_features(
        bank, config(reconstruction="pixel", radius=radius, pixel_k=3, sampling="subspace", lam=3)
    )
    candidates = pursuit.sample_candidates(model, test)
    ours = level_maps(model, test)["level2"]
    for b in range(2):
        chosen = np.asarray(candidates.indices)[b][np.asarray(candidates.valid)[b]]
        assert len(chosen) == 3
        reference = pixel_mode_reference(bank["level2"], test["level2"][b], chosen, radius, 3)
        np.testing.assert_allclose(ours[b], reference, rtol=1e-4, atol=1e-4)


def test_pixel_mode_with_radius_one_tolerates_a_one_pixel_shift():
    bank = make_bank(8)
    image = bank["level2"][4]
    shifted = image.copy()
    shifted[:, 1:] = image[:, :-1]  # shift right by one; column 0 keeps its own vectors
    test = {"level2": shifted[None], "level3": bank["level3"][4][None], "pooled": bank["pooled"][4][None]}
    scale = np.abs(shifted).max()
    # Selection by normalised correlation makes the one-atom pursuit pick the identical vector.
    image_mode = sj.fit_features(bank, config(sampling="subspace", lam=3, k=3, normalize_selection=True))
    pixel_r1 = sj.fit_features(
        bank,
        config(
            sampling="subspace", lam=3, reconstruction="pixel", radius=1, pixel_k=1, normalize_selection=True
        ),
    )
    pixel_r0 = sj.fit_features(bank, dataclasses.replace(pixel_r1.config, radius=0))
    assert float(image_mode.score(test, progress=False)[1][0]) > 0.3 * scale
    assert float(pixel_r0.score(test, progress=False)[1][0]) > 0.3 * scale
    assert float(pixel_r1.score(test, progress=False)[1][0]) < 1e-5 * scale


@pytest.mark.parametrize("reconstruction", ["image", "pixel"])
def test_batch_scoring_equals_per_image_scoring(reconstruction):
    bank = make_bank(9)
    rng = np.random.default_rng(10)
    test = {key: rng.normal(size=(3, *shape)).astype(np.float32) for key, shape in SHAPES.items()}
    levels = (2, 3) if reconstruction == "image" else (2,)  # pixel mode compiles slowly: one level
    model = sj.fit_features(
        bank, config(levels=levels, sampling="subspace", reconstruction=reconstruction, sigma=1.0)
    )
    maps, scores = model.score(test, progress=False)
    for b in range(3):
        single_maps, single_scores = model.score(
            {key: value[b : b + 1] for key, value in test.items()}, progress=False
        )
        np.testing.assert_allclose(np.asarray(maps[b]), np.asarray(single_maps[0]), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(float(scores[b]), float(single_scores[0]), rtol=1e-5)


def test_user_jit_equals_the_method():
    bank = make_bank(11)
    rng = np.random.default_rng(12)
    test = {key: rng.normal(size=(2, *shape)).astype(np.float32) for key, shape in SHAPES.items()}
    model = sj.fit_features(bank, config(levels=(2, 3), sampling="subspace", sigma=1.0))

    @jax.jit
    def user_step(model, features):
        maps, scores = sj.score_features(model, features)
        return maps.mean(axis=0), scores

    mean_map, jit_scores = user_step(model, test)
    maps, scores = model.score(test, progress=False)
    np.testing.assert_allclose(np.asarray(jit_scores), np.asarray(scores), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(mean_map), np.asarray(maps).mean(axis=0), rtol=1e-5, atol=1e-6)


# Measured on these features (seeds below): the largest map difference is well under 1% of the map's
# maximum in image mode (0.13%) and in pixel mode (0.45%), the relative rounding of bfloat16 (2^-8) carried
# through the correlations and the residual. Pixel mode needs atoms longer than the window holds
# atoms (c = 64 > 3·9), as real features are: with overcomplete per-pixel dictionaries a rounding
# difference can flip a near-tie in the selection and change a pixel's residual outright.
BF16_TOLERANCE = 0.01


@pytest.mark.parametrize("reconstruction", ["image", "pixel"])
def test_bfloat16_bank_stays_within_tolerance_of_float32(reconstruction):
    rng = np.random.default_rng(13)
    bank = {
        "level2": rng.normal(size=(N_TRAIN, 6, 6, 64)).astype(np.float32),
        "pooled": rng.normal(size=(N_TRAIN, 256)).astype(np.float32),
    }
    test = combine(bank, [1, 2, 3], [0.5, 1.0, -0.5])
    test = {
        key: np.repeat(value, 2, axis=0) + 0.3 * rng.normal(size=(2, *value.shape[1:])).astype(np.float32)
        for key, value in test.items()
    }
    float32 = sj.fit_features(
        bank, config(image_size=48, sampling="subspace", lam=3, reconstruction=reconstruction, sigma=1.0)
    )
    bfloat16 = sj.fit_features(bank, dataclasses.replace(float32.config, bank_dtype="bfloat16"))
    assert bfloat16.banks["level2"].dtype == jnp.bfloat16 and bfloat16.grams["level2"].dtype == jnp.float32
    np.testing.assert_array_equal(np.asarray(bfloat16.grams["level2"]), np.asarray(float32.grams["level2"]))
    maps32, _ = float32.score(test, progress=False)
    maps16, _ = bfloat16.score(test, progress=False)
    assert maps16.dtype == jnp.float32
    error = float(jnp.max(jnp.abs(maps16 - maps32)) / jnp.max(maps32))
    print(f"bfloat16 vs float32 ({reconstruction} mode): max map difference {error:.2%} of the maximum")
    assert error < BF16_TOLERANCE


def test_fit_features_rejects_missing_levels_and_mismatched_counts():
    bank = make_bank()
    with pytest.raises(ValueError, match="missing.*level3"):
        sj.fit_features({"level2": bank["level2"], "pooled": bank["pooled"]}, config(levels=(2, 3)))
    with pytest.raises(ValueError, match="same number N"):
        sj.fit_features({"level2": bank["level2"], "pooled": bank["pooled"][:5]}, config(sampling="subspace"))
    with pytest.raises(ValueError, match="config"):
        sj.fit_features(bank, {"k": 3})


def test_subspace_sampling_on_a_model_fit_without_it_is_a_clear_error():
    bank = make_bank()
    model = sj.fit_features(bank, config(sampling="none"))
    switched = dataclasses.replace(model, config=dataclasses.replace(model.config, sampling="subspace"))
    with pytest.raises(ValueError, match="refit it with sampling='subspace'"):
        pursuit.sample_candidates(switched, bank)


def test_score_features_rejects_features_of_another_size():
    model = sj.fit_features(make_bank(), config())
    with pytest.raises(ValueError, match="level2.*like the bank"):
        model.score({"level2": np.zeros((1, 4, 4, 6), np.float32)}, progress=False)


def test_model_is_a_pytree_with_static_config():
    model = sj.fit_features(
        make_bank(), config(sampling="subspace", bank_dtype="bfloat16"), weights_sha256="ab" * 32
    )
    leaves, treedef = jax.tree_util.tree_flatten(model)
    assert len(leaves) == 4  # level2 bank and Gram, sampling bank and Gram
    rebuilt = jax.tree_util.tree_unflatten(treedef, leaves)
    assert rebuilt.config == model.config and rebuilt.weights_sha256 == "ab" * 32
    assert model.n_train == N_TRAIN and model.sampling_bank.shape == (N_TRAIN, 256)


@pytest.mark.parametrize("reconstruction", ["image", "pixel"])
def test_every_matrix_product_of_the_scorer_asks_for_full_float32(reconstruction):
    # Accelerators round float32 products to TF32/bfloat16 by default; residuals need full precision.
    bank = make_bank(15)
    model = sj.fit_features(bank, config(sampling="subspace", reconstruction=reconstruction))
    text = jax.jit(sj.score_features).lower(model, {key: value[:2] for key, value in bank.items()}).as_text()
    dots = [line for line in text.splitlines() if "dot_general" in line]
    assert dots and all("HIGHEST" in line for line in dots)
