"""Learned dictionaries: M synthetic training images fitted to the nominal features (``Config.dictionary``).

The subspace model rebuilds a test image from k of its N training images. A learned dictionary replaces
those N images by M < N *atoms*, each one synthetic image (a map per reconstruction level and a sampling
vector), chosen so that the model's own pursuit rebuilds the training images from them as well as it
can. The model then stores M rows per bank instead of N, and scoring is unchanged.

Learning alternates, from the k-center coreset of M training images (``subspace_jax.ops.kcenter`` on the
sampling features), ``steps`` times:

1. *codes*: every training image is coded exactly as the scorer codes a test image (candidates by the
   sampling pursuit, then the k-sparse OMP per level among them), giving a sparse code matrix C_l (N, M)
   per level;
2. *atoms*: with the codes fixed, each level's atoms are the least-squares solution of X_l ≈ C_l A_l,
   A_l = (C_lᵀC_l + εI)⁻¹(C_lᵀX_l + εA_l) (the method of optimal directions, MOD; the small ε keeps an
   atom no image uses where it was). The sampling vectors follow the codes of the last reconstruction
   level the same way, so the sampling pursuit keeps choosing atoms whose maps fit.

The closed-form update needs no optimiser: on MTD it gave the same accuracy as atoms trained with Adam
(optax) on the same objective (docs/results/mtd_tuning_efficientnet_lite0.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from subspace_jax.engine import batches
from subspace_jax.methods.subspace.model import SubspaceModel
from subspace_jax.methods.subspace.pursuit import image_pursuit, sample_candidates
from subspace_jax.ops.kcenter import kcenter


def learn_atoms(
    levels: dict[str, np.ndarray],
    sampling: np.ndarray | None,
    config: Any,
    atoms: int,
    steps: int,
) -> tuple[dict[str, np.ndarray], np.ndarray | None, list[dict[str, float]]]:
    """Learn ``atoms`` synthetic images from N training images (module docstring).

    Args:
      levels: reconstruction level key -> (N, h, w, c) float features, as the banks store them (after
        aggregation and projection).
      sampling: (N, ...) sampling-level features, as the sampling bank stores them, for
        ``sampling="subspace"``; else None.
      config: the model ``Config`` (k, lam, sampling, tol and selection of the pursuit are used).
      atoms: M, at most N.
      steps: alternations of (codes, atoms).

    Returns:
      (level key -> (M, h, w, c) float32 atoms, (M, ...) float32 sampling atoms or None, and per step the
      relative reconstruction error of each level, sum ||x − x̂||² / sum ||x||² over the training images,
      before the first and after each update).
    """
    keys = list(levels)
    n = next(iter(levels.values())).shape[0]
    if not 1 <= atoms <= n:
        raise ValueError(f"config.dictionary={atoms}: expected 1..{n} (the number of training images)")
    shapes = {key: levels[key].shape[1:] for key in keys}
    # The training rows stay as given (float32, or the bank's dtype for large N) and are read in chunks
    # in float64: the statistics are accumulated, so no float64 copy of all N rows is ever held.
    energy = {key: _sum_of_squares(levels[key]) for key in keys}  # sum ||x||², raw units
    # Levels are learned in units of their RMS so that the ε of every solve means the same.
    scale = {key: float(np.sqrt(energy[key] / levels[key].size)) or 1.0 for key in keys}
    seeds = sampling if sampling is not None else levels[keys[-1]]
    start = np.sort(np.asarray(kcenter(np.asarray(seeds, np.float32).reshape(n, -1), atoms)))
    learned = {key: _rows64(levels[key][start]) / scale[key] for key in keys}
    sampling_atoms = None if sampling is None else _rows64(sampling[start])
    # The model that codes the training images while learning: the atoms as its banks, nothing fitted on
    # top, and the sampling features under "pooled" whatever level they come from (that level may also be
    # a reconstruction level whose bank holds other, projected or aggregated, features).
    plain = dataclasses.replace(
        config,
        sampling_level="pooled",
        levels=tuple(int(key.removeprefix("level")) for key in keys),
        dictionary=0,
        coreset=0,
        aggregate=1,
        projection="none",
        projection_channels=(),
        bank_dtype="float32",
    )
    train = dict(levels)
    if sampling is not None:
        train["pooled"] = sampling

    def as_features(learned, sampling_atoms):
        out = {
            key: (learned[key] * scale[key]).reshape((atoms, *shapes[key])).astype(np.float32) for key in keys
        }
        if sampling is not None:
            out["pooled"] = sampling_atoms.reshape((atoms, *sampling.shape[1:])).astype(np.float32)
        return out

    history = []
    for step in range(steps + 1):
        current = as_features(learned, sampling_atoms)
        model = SubspaceModel.from_levels(
            {key: current[key] for key in keys}, current.get("pooled"), {}, plain, plain.backbone, None
        )
        codes = _codes(model, train)
        history.append({key: float(codes[key][2].sum() / energy[key]) for key in keys})
        if step == steps:
            break
        matrices = {key: code_matrix(*codes[key][:2], atoms) for key in keys}
        learned = {
            key: optimal_directions(matrices[key], levels[key], learned[key], 1.0 / scale[key])
            for key in keys
        }
        if sampling is not None:
            sampling_atoms = optimal_directions(matrices[keys[-1]], sampling, sampling_atoms)
    out = as_features(learned, sampling_atoms)
    return out, out.pop("pooled", None), history


def code_matrix(support: np.ndarray, coef: np.ndarray, atoms: int) -> np.ndarray:
    """(N, k) supports (-1 = unused slot) and coefficients -> the dense (N, atoms) code matrix C."""
    codes = np.zeros((len(support), atoms), np.float64)
    rows = np.repeat(np.arange(len(support)), support.shape[1])
    used = support.ravel() >= 0
    np.add.at(codes, (rows[used], support.ravel()[used]), coef.ravel()[used])
    return codes


def optimal_directions(
    codes: np.ndarray, targets: np.ndarray, previous: np.ndarray, factor: float = 1.0
) -> np.ndarray:
    """argmin_A ||T − codes A||² + ε||A − previous||² with T = ``factor`` · targets: (N, M) codes,
    (N, ...) targets (any float dtype, read in float64 chunks), (M, d) -> (M, d).

    ε is 10⁻⁶ of the mean diagonal of CᵀC: negligible for atoms in use, and it keeps an unused atom (a
    zero column of C) where it was instead of making the system singular."""
    gram = codes.T @ codes
    eps = 1e-6 * max(float(np.trace(gram)) / len(gram), 1e-12)
    right = np.zeros_like(previous)
    for begin in range(0, len(codes), _CHUNK):
        right += codes[begin : begin + _CHUNK].T @ (_rows64(targets[begin : begin + _CHUNK]) * factor)
    return np.linalg.solve(gram + eps * np.eye(len(gram)), right + eps * previous)


_CHUNK = 1024  # training rows per float64 block


def _rows64(rows: np.ndarray) -> np.ndarray:
    """(n, ...) rows of any float dtype (bfloat16 included) as float64 (n, d)."""
    return np.asarray(rows, np.float32).astype(np.float64).reshape(len(rows), -1)


def _sum_of_squares(rows: np.ndarray) -> float:
    return float(sum(np.sum(_rows64(rows[i : i + _CHUNK]) ** 2) for i in range(0, len(rows), _CHUNK)))


def _codes(model: Any, features: dict[str, np.ndarray], batch: int = 64) -> dict[str, tuple]:
    """Per reconstruction level: (support (N, k), coef (N, k), residual energy (N,)) of every row of
    ``features``, coded as the scorer codes a test image."""
    n = next(iter(features.values())).shape[0]
    parts = []
    for begin in range(0, n, batch):
        size = min(batch, n - begin)
        # One compiled shape: the short last chunk is padded with copies of its last row, dropped below.
        chunk = {
            key: batches.pad_batch(np.asarray(value[begin : begin + batch], np.float32), batch)
            for key, value in features.items()
        }
        out = _codes_jit(model, chunk)
        parts.append({key: tuple(np.asarray(a)[:size] for a in value) for key, value in out.items()})
    return {key: tuple(np.concatenate([p[key][i] for p in parts]) for i in range(3)) for key in parts[0]}


@jax.jit
def _codes_jit(model: Any, features: dict[str, jax.Array]) -> dict[str, tuple]:
    with jax.default_matmul_precision("highest"):
        candidates = sample_candidates(model, features)
        out = {}
        for key, bank in model.banks.items():
            targets = features[key].reshape(features[key].shape[0], -1).astype(jnp.float32)
            rows = bank.reshape(bank.shape[0], -1)
            gram = None if model.grams is None else model.grams[key]
            result, residual = image_pursuit(rows, gram, targets, candidates, model.config, n=model.n_train)
            out[key] = (result.support, result.coef, jnp.sum(residual * residual, axis=-1))
        return out
