"""Learned dictionaries (``Config.dictionary``, ``subspace_jax.methods.subspace.dictionary``) against
independent references: scikit-learn's dictionary learning and OMP, numpy least squares, and the model's
own save/load."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.decomposition import DictionaryLearning
from sklearn.linear_model import orthogonal_mp

import subspace_jax as sj
from subspace_jax.methods.subspace import dictionary
from subspace_jax.methods.subspace.fit import fit_features
from subspace_jax.methods.subspace.pursuit import prepare_level
from subspace_jax.ops.kcenter import kcenter
from subspace_jax.serving import checkpoint


def _sparse_data(seed: int, atoms: int, k: int, n: int, shape: tuple[int, ...]):
    """n maps of ``shape`` that are k-sparse combinations of ``atoms`` random maps, plus 1% noise."""
    rng = np.random.default_rng(seed)
    true = rng.standard_normal((atoms, int(np.prod(shape))))
    codes = np.zeros((n, atoms))
    for i in range(n):
        codes[i, rng.choice(atoms, k, replace=False)] = rng.uniform(0.5, 1.5, k) * rng.choice([-1, 1], k)
    x = codes @ true + 0.01 * rng.standard_normal((n, true.shape[1]))
    return x, x.reshape(n, *shape).astype(np.float32)


def _omp_error(atoms: np.ndarray, x: np.ndarray, k: int) -> float:
    """Relative error of x's k-sparse OMP codes over ``atoms`` (rows), by scikit-learn's OMP."""
    with warnings.catch_warnings():  # a data point among the atoms is rebuilt by one atom exactly
        warnings.filterwarnings("ignore", "Orthogonal matching pursuit ended prematurely")
        codes = orthogonal_mp(atoms.T, x.T, n_nonzero_coefs=k)
    return float(np.sum((x - codes.T @ atoms) ** 2) / np.sum(x**2))


def test_learned_atoms_beat_their_k_center_start_and_match_sklearn_dictionary_learning():
    """10 generating atoms, 3-sparse codes: scikit-learn's DictionaryLearning (OMP transform) reaches the
    noise floor; the library's learning from the k-center start must come within 1% of the data's energy
    of it, where the start is at about 30%."""
    m, k = 10, 3
    x, maps = _sparse_data(0, m, k, 300, (3, 3, 4))
    pooled = maps.mean(axis=(1, 2))
    # lam = m: every atom is a candidate, so the model's pursuit is plain k-sparse OMP like sklearn's.
    config = sj.Config(backbone="efficientnet_lite0", levels=(4,), sampling_level="pooled", k=k, lam=m)
    reference = DictionaryLearning(
        n_components=m, transform_algorithm="omp", transform_n_nonzero_coefs=k, random_state=0, max_iter=100
    ).fit(x)
    reference_error = _omp_error(reference.components_, x, k)
    assert reference_error < 0.01
    start_error = _omp_error(x[np.sort(np.asarray(kcenter(pooled, m)))], x, k)
    assert start_error > 0.2

    atoms, sampling, history = dictionary.learn_atoms({"level4": maps}, pooled, config, m, steps=40)
    learned = atoms["level4"].reshape(m, -1).astype(np.float64)
    assert history[0]["level4"] == pytest.approx(start_error, rel=1e-3)
    assert history[-1]["level4"] == pytest.approx(_omp_error(learned, x, k), rel=1e-2, abs=1e-5)
    assert _omp_error(learned, x, k) < reference_error + 0.01
    # Unprojected level 4: the sampling vectors, fitted with the level-4 codes, are the atoms' means.
    np.testing.assert_allclose(sampling, atoms["level4"].mean(axis=(1, 2)), rtol=1e-4, atol=1e-5)


def test_sampling_atoms_follow_the_last_level_codes_when_that_level_was_projected():
    """The sampling vectors are fitted with the last level's codes, so when the training sampling vectors
    are a linear map W of that level's spatial means (a projected level 4 and the pooled features), the
    learned sampling atoms are the learned maps' means times W (least squares is linear)."""
    rng = np.random.default_rng(4)
    level4 = rng.standard_normal((120, 3, 3, 4)).astype(np.float32)
    w = rng.standard_normal((4, 6))
    sampling = (level4.mean(axis=(1, 2)) @ w).astype(np.float32)
    config = sj.Config(backbone="efficientnet_lite0", levels=(4,), sampling_level="pooled", k=2, lam=8)
    atoms, sampling_atoms, history = dictionary.learn_atoms({"level4": level4}, sampling, config, 8, 5)
    assert sampling_atoms.shape == (8, 6)
    np.testing.assert_allclose(sampling_atoms, atoms["level4"].mean(axis=(1, 2)) @ w, rtol=1e-3, atol=1e-4)
    assert history[-1]["level4"] < history[0]["level4"]


def test_optimal_directions_is_the_least_squares_solution():
    rng = np.random.default_rng(1)
    codes = rng.standard_normal((40, 6))
    targets = rng.standard_normal((40, 9))
    expected, *_ = np.linalg.lstsq(codes, targets, rcond=None)
    np.testing.assert_allclose(
        dictionary.optimal_directions(codes, targets, np.zeros((6, 9))), expected, atol=1e-5
    )
    # An atom no image uses (a zero column) stays where it was.
    codes[:, 2] = 0
    previous = rng.standard_normal((6, 9))
    out = dictionary.optimal_directions(codes, targets, previous)
    np.testing.assert_allclose(out[2], previous[2], rtol=1e-9)


def test_code_matrix_places_each_coefficient_at_its_atom():
    support = np.array([[2, 0, -1], [1, 1, 3]])
    coef = np.array([[0.5, -1.0, 9.0], [2.0, 3.0, 4.0]])
    expected = np.array([[-1.0, 0, 0.5, 0], [0, 5.0, 0, 4.0]])  # -1 slots ignored, repeats add up
    np.testing.assert_array_equal(dictionary.code_matrix(support, coef, 4), expected)


def _features(n: int, seed: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    level3 = rng.standard_normal((n, 4, 4, 6)).astype(np.float32)
    level4 = rng.standard_normal((n, 2, 2, 10)).astype(np.float32)
    return {"level3": level3, "level4": level4, "pooled": level4.mean(axis=(1, 2))}


def test_a_model_with_a_dictionary_holds_m_rows_and_scores_and_round_trips(tmp_path):
    config = sj.Config(
        backbone="efficientnet_lite0",
        levels=(3, 4),
        sampling_level="pooled",
        k=2,
        lam=4,
        projection="pca",
        projection_channels=(3, 4),
        bank_dtype="bfloat16",
        dictionary=8,
        dictionary_steps=3,
    )
    train = _features(30)
    model = fit_features(train, config)
    assert model.n_train == 8 and model.sampling_bank.shape == (8, 10)
    assert {key: bank.shape for key, bank in model.banks.items()} == {
        "level3": (8, 4, 4, 3),
        "level4": (8, 2, 2, 4),
    }
    # The banks are the learned atoms: their Gram matrices, not those of any 8 training images.
    bank = np.asarray(model.banks["level4"], np.float32).reshape(8, -1)
    np.testing.assert_allclose(np.asarray(model.grams["level4"]), bank @ bank.T, rtol=2e-2, atol=2e-2)
    test = _features(5, seed=3)
    maps, scores = model.score(test, progress=False)
    assert maps.shape == (5, 256, 256) and np.all(np.isfinite(np.asarray(maps)))
    # Learning lowers the training images' reconstruction error against the k-center start.
    _, _, history = dictionary.learn_atoms(
        {k: np.asarray(v) for k, v in _projected(model, train).items()}, train["pooled"], config, 8, 3
    )
    assert all(history[-1][key] < history[0][key] for key in history[0])
    checkpoint.save(model, tmp_path / "model")
    loaded = checkpoint.load(tmp_path / "model")
    assert loaded.config == config
    np.testing.assert_allclose(loaded.score(test, progress=False)[0], np.asarray(maps), atol=1e-6)


def _projected(model, features):
    return {key: prepare_level(model, key, features[key]) for key in model.banks}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"dictionary": -1}, "Config.dictionary"),
        ({"dictionary": 4, "reconstruction": "pixel"}, "reconstruction='pixel'"),
        ({"dictionary": 4, "coreset": 6}, "coreset"),
        ({"dictionary": 4, "k": 5}, "at least k=5"),
        ({"dictionary_steps": 0}, "Config.dictionary_steps"),
    ],
)
def test_dictionary_settings_are_checked(fields, message):
    with pytest.raises(ValueError, match=message):
        sj.Config(backbone="efficientnet_lite0", **fields)


def test_a_dictionary_larger_than_the_training_set_is_refused():
    config = sj.Config(
        backbone="efficientnet_lite0", levels=(3, 4), sampling_level="pooled", k=2, dictionary=40
    )
    with pytest.raises(ValueError, match=r"config.dictionary=40: expected 1..30"):
        fit_features(_features(30), config)
