"""Orthogonal matching pursuit (OMP) kernels in pure JAX.

Two kernels share one pursuit (selection, Cholesky least squares, stopping rules) and one result type:

* :func:`omp_gram` -- Batch-OMP (Rubinstein, Zibulevsky & Elad 2008) from a precomputed Gram matrix
  ``gram = atoms @ atoms.T`` (M, M) and correlations ``alpha = targets @ atoms.T`` (B, M). Every step
  is O(M k) work on ``gram`` and ``alpha``; the atoms themselves are touched once, by the caller's
  ``alpha`` pass. This is the kernel for whole-image atoms (M up to a few hundred, d huge).
* :func:`omp` -- plain OMP that recomputes ``atoms @ residual`` every step (no Gram matrix), for
  large M or for per-pixel atoms that change from target to target (vmap it over pixels).

Both follow ``sklearn.linear_model.orthogonal_mp`` / ``orthogonal_mp_gram``: no normalisation of
the atoms; the next atom is the candidate with the largest ``|<atom, residual>|`` (the lowest index
on exact ties, like numpy's argmax; sklearn's Gram variant breaks exact ties in its internally
swapped order, which can differ after the first step); the coefficients are the least-squares fit
on the chosen atoms; the pursuit stops early when the chosen atom is linearly dependent on the
support or carries no correlation. They differ from sklearn in that the tolerance is relative
(``||r||^2 <= tol * ||y||^2``) and applies together with ``k`` (sklearn's absolute ``tol`` replaces
``n_nonzero_coefs``), and in the guards (relative thresholds instead of sklearn's absolute machine
epsilon, see ``_PIVOT_RTOL`` and ``_CORRELATION_RTOL``).

Everything has static shapes: a fixed ``k``-step ``lax.fori_loop``, (k,)-sized support buffers and
masks instead of data-dependent shapes, so both kernels run under ``jit`` and ``vmap`` in float32 and
float64. Results are an :class:`OMPResult` pytree.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["OMPResult", "omp", "omp_columns", "omp_gram", "reconstruct", "residual"]

# A new atom whose squared distance to the span of the support is below this fraction of its squared
# norm is treated as linearly dependent and ends the pursuit (sklearn stops on the same event, with an
# absolute threshold). In float32 a Gram matrix of long feature vectors carries ~1e-6 relative error,
# so an exact duplicate can show a pivot of that size; 1000 eps (1.2e-4 in float32, 2.2e-13 in
# float64) still admits any atom whose coefficients the factor can resolve to a few digits.
_PIVOT_RTOL = 1000.0
# A best correlation at or below this multiple of eps times the largest initial correlation is
# rounding noise of a residual that is already zero: stop instead of fitting noise (sklearn's
# ``alpha**2 < eps`` guard, made scale-free). It also stops at once on zero targets.
_CORRELATION_RTOL = 16.0


class OMPResult(NamedTuple):
    """Result of a batch of pursuits (a pytree; every field has the batch axis first).

    Attributes:
      support: (B, k) int32 atom indices in selection order, -1 in unused slots.
      coef: (B, k) least-squares coefficients of ``support``, 0 in unused slots.
      residual_norm_sq: (B,) squared norm of ``targets - reconstruct(support, coef, atoms)``.
        :func:`omp` computes it from the residual itself; :func:`omp_gram` from the Gram matrix
        (``||y||^2 - explained energy``, which in float32 loses relative precision when the residual
        is tiny compared to ``||y||``) and returns NaN when ``target_norm_sq`` is not given.
      n_atoms: (B,) int32 number of atoms used (filled slots of ``support``).
    """

    support: jax.Array
    coef: jax.Array
    residual_norm_sq: jax.Array
    n_atoms: jax.Array


# --------------------------------------------------------------------------------------------------
# Input checks (trace time: shapes and static arguments only, so they also run under jit and vmap).


def _shape_error(name: str, expected: str, array: Any) -> ValueError:
    return ValueError(f"{name}: expected {expected}, got shape {tuple(np.shape(array))}")


def _check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ValueError(f"k: expected a Python int >= 1 (a static number of atoms), got {k!r}")
    if k < 1:
        raise ValueError(f"k: expected an int >= 1, got {k}")
    return int(k)


def _check_tol(tol: Any) -> None:
    if np.ndim(tol) != 0:
        raise _shape_error("tol", "a scalar relative tolerance", tol)
    if isinstance(tol, (int, float, np.number)) and not tol >= 0:  # also rejects NaN
        raise ValueError(f"tol: expected a relative tolerance >= 0, got {tol!r}")


def _float_dtype(*arrays: Any) -> jnp.dtype:
    dtype = jnp.result_type(*arrays)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else jnp.result_type(float)


def _candidates_axis(candidates: Any, batch: int, n_atoms: int) -> int | None:
    """The vmap axis of the candidate mask: None when absent or shared by the batch, else 0."""
    shape = None if candidates is None else np.shape(candidates)
    if shape is None or shape == (n_atoms,):
        return None
    if shape == (batch, n_atoms):
        return 0
    raise _shape_error("candidates", f"a bool mask of shape ({n_atoms},) or ({batch}, {n_atoms})", candidates)


def _candidate_mask(candidates: Any, n_atoms: int) -> jax.Array:
    return jnp.ones((n_atoms,), bool) if candidates is None else jnp.asarray(candidates, bool)


# --------------------------------------------------------------------------------------------------
# The pursuit, written for one target and vmapped over the batch.


class _Pursuit(NamedTuple):
    """Loop state shared by both kernels (one target)."""

    support: jax.Array  # (k,) int32, -1 unused
    selected: jax.Array  # (M,) bool
    inverse_factor: jax.Array  # (k, k) L^-1, L the lower Cholesky factor of gram[support][:, support]
    forward: jax.Array  # (k,) L^-1 @ alpha[support]; its squared norm is the explained energy
    coef: jax.Array  # (k,)
    active: jax.Array  # () bool: still adding atoms
    residual_norm_sq: jax.Array  # ()


def _initial_state(k: int, n_atoms: int, dtype: jnp.dtype, norm_sq: jax.Array) -> _Pursuit:
    return _Pursuit(
        support=jnp.full((k,), -1, jnp.int32),
        selected=jnp.zeros((n_atoms,), bool),
        inverse_factor=jnp.eye(k, dtype=dtype),
        forward=jnp.zeros((k,), dtype),
        coef=jnp.zeros((k,), dtype),
        active=jnp.asarray(True),
        residual_norm_sq=norm_sq.astype(dtype),
    )


def _selection_weights(norms_sq: jax.Array, normalize_selection: bool) -> jax.Array | None:
    if not normalize_selection:
        return None
    safe = jnp.where(norms_sq > 0, norms_sq, 1)
    return jnp.where(norms_sq > 0, lax.rsqrt(safe), 0)


def _correlation_floor(alpha: jax.Array, selectable: jax.Array) -> jax.Array:
    eps = jnp.finfo(alpha.dtype).eps
    return _CORRELATION_RTOL * eps * jnp.max(jnp.where(selectable, jnp.abs(alpha), 0))


def _step(
    state: _Pursuit,
    step: jax.Array,
    correlations: jax.Array,
    cross_gram: Callable[[jax.Array], jax.Array],
    norms_sq: jax.Array,
    alpha: jax.Array,
    selectable: jax.Array,
    weights: jax.Array | None,
    floor: jax.Array,
) -> tuple[_Pursuit, jax.Array, jax.Array]:
    """One OMP step for one target: choose an atom, extend the Cholesky factor, re-solve.

    Args:
      correlations: (M,) <atom_i, residual>.
      cross_gram: function lam -> (k,) <atom_lam, atom_support_j>, 0 in unused slots.
      norms_sq: (M,) squared atom norms (the Gram diagonal). alpha: (M,) <atom_i, target>.
      selectable: (M,) candidates with nonzero norm. weights: (M,) 1/norm for the choice, or None.
    Returns the new state, the chosen index and whether it was accepted.
    """
    available = selectable & ~state.selected
    magnitude = jnp.abs(correlations)
    score = magnitude if weights is None else magnitude * weights
    lam = jnp.argmax(jnp.where(available, score, -1)).astype(jnp.int32)
    found = available[lam] & (magnitude[lam] > floor)

    # Incremental Cholesky update rather than a masked re-factorisation each step: O(k^2) per step
    # instead of O(k^3), the same recurrence as sklearn, and the new pivot is exactly the atom's
    # distance to the span of the support, which is the test for a dependent (duplicate, zero or
    # in-span) atom. The loop carries L^-1 instead of L: appending a row to L appends a row to L^-1,
    # so every solve becomes a (k, k) matrix-vector product. XLA's batched triangular solve (under
    # vmap) is slower to compile and to run than these products at k <= a few tens, and the pivot
    # test keeps the factor well conditioned. Unused slots hold identity rows, so they stay exactly 0.
    cross = cross_gram(lam)
    new_row = state.inverse_factor @ cross  # row `step` of L, left of the diagonal
    pivot_sq = norms_sq[lam] - new_row @ new_row
    independent = pivot_sq > _PIVOT_RTOL * jnp.finfo(pivot_sq.dtype).eps * norms_sq[lam]
    pivot = jnp.sqrt(jnp.where(independent, pivot_sq, 1))
    accept = state.active & found & independent

    unit = jax.nn.one_hot(step, new_row.shape[0], dtype=new_row.dtype)
    inverse_row = (unit - new_row @ state.inverse_factor) / pivot
    inverse_factor = state.inverse_factor.at[step].set(
        jnp.where(accept, inverse_row, state.inverse_factor[step])
    )
    forward_value = (alpha[lam] - new_row @ state.forward) / pivot
    forward = state.forward.at[step].set(jnp.where(accept, forward_value, 0))
    coef = forward @ inverse_factor  # L^-T L^-1 alpha[support]
    new_state = state._replace(
        support=state.support.at[step].set(jnp.where(accept, lam, -1)),
        selected=state.selected.at[lam].set(state.selected[lam] | accept),
        inverse_factor=inverse_factor,
        forward=forward,
        coef=jnp.where(accept, coef, state.coef),
        active=accept,
    )
    return new_state, lam, accept


def _finish(state: _Pursuit) -> OMPResult:
    n_atoms = jnp.sum(state.support >= 0).astype(jnp.int32)
    return OMPResult(state.support, state.coef, state.residual_norm_sq, n_atoms)


def _gram_pursuit(
    norms_sq: jax.Array,
    column: Callable[[jax.Array], jax.Array],
    alpha: jax.Array,
    candidates: jax.Array,
    norm_sq: jax.Array,
    tol: jax.Array,
    *,
    k: int,
    normalize_selection: bool,
    has_norm: bool,
) -> OMPResult:
    """Batch-OMP for one target. norms_sq (M,) the Gram diagonal, column(i) -> (M,) the Gram column of
    atom i (read from a stored Gram matrix, or computed from the atoms), alpha (M,), candidates (M,)
    bool, norm_sq ()."""
    n_atoms = norms_sq.shape[0]
    dtype = alpha.dtype
    selectable = candidates & (norms_sq > 0)
    weights = _selection_weights(norms_sq, normalize_selection)
    floor = _correlation_floor(alpha, selectable)
    threshold = tol * norm_sq

    def body(step, carry):
        # support_rows: (k, M) gram[support, :], 0 in unused slots. Rows, not columns: each step writes
        # one contiguous row (a column write into an (M, k) buffer made the sampling pursuit 1.6x slower).
        state, support_rows = carry
        correlations = alpha - state.coef @ support_rows
        state, lam, accept = _step(
            state,
            step,
            correlations,
            lambda i: support_rows[:, i],
            norms_sq,
            alpha,
            selectable,
            weights,
            floor,
        )
        support_rows = support_rows.at[step].set(jnp.where(accept, column(lam), 0))
        explained = state.forward @ state.forward
        residual_norm_sq = jnp.maximum(norm_sq - explained, 0) if has_norm else state.residual_norm_sq
        state = state._replace(
            residual_norm_sq=residual_norm_sq,
            active=state.active & (residual_norm_sq > threshold) if has_norm else state.active,
        )
        return state, support_rows

    initial = _initial_state(k, n_atoms, dtype, norm_sq)
    if has_norm:
        initial = initial._replace(active=norm_sq > threshold)
    state, _ = lax.fori_loop(0, k, body, (initial, jnp.zeros((k, n_atoms), dtype)))
    return _finish(state)


def _plain_pursuit(
    atoms: jax.Array,
    target: jax.Array,
    candidates: jax.Array,
    tol: jax.Array,
    *,
    k: int,
    normalize_selection: bool,
) -> OMPResult:
    """Plain OMP for one target. atoms (M, d), target (d,), candidates (M,) bool."""
    n_atoms, dim = atoms.shape
    norms_sq = jnp.sum(atoms * atoms, axis=1)
    alpha = atoms @ target
    selectable = candidates & (norms_sq > 0)
    weights = _selection_weights(norms_sq, normalize_selection)
    floor = _correlation_floor(alpha, selectable)
    norm_sq = target @ target
    threshold = tol * norm_sq

    def body(step, carry):
        state, residual_vec, support_atoms = carry  # support_atoms: (k, d), 0 in unused slots
        correlations = atoms @ residual_vec
        state, lam, accept = _step(
            state,
            step,
            correlations,
            lambda i: support_atoms @ atoms[i],
            norms_sq,
            alpha,
            selectable,
            weights,
            floor,
        )
        support_atoms = support_atoms.at[step].set(jnp.where(accept, atoms[lam], 0))
        # The true residual, not the Gram-based estimate: this kernel exists for the cases where
        # the residual itself is wanted and its norm must not suffer cancellation.
        residual_vec = target - state.coef @ support_atoms
        residual_norm_sq = residual_vec @ residual_vec
        state = state._replace(
            residual_norm_sq=residual_norm_sq, active=state.active & (residual_norm_sq > threshold)
        )
        return state, residual_vec, support_atoms

    initial = _initial_state(k, n_atoms, atoms.dtype, norm_sq)._replace(active=norm_sq > threshold)
    state, _, _ = lax.fori_loop(0, k, body, (initial, target, jnp.zeros((k, dim), atoms.dtype)))
    return _finish(state)


# The batched kernels take the caller's arrays as they are and convert inside jit, so an eager call
# compiles one program instead of dispatching (and compiling) a conversion per argument.


@partial(jax.jit, static_argnames=("k", "normalize_selection", "candidates_axis", "dtype"))
def _batched_gram(gram, alpha, candidates, norm_sq, tol, *, k, normalize_selection, candidates_axis, dtype):
    gram, alpha = jnp.asarray(gram, dtype), jnp.asarray(alpha, dtype)
    has_norm = norm_sq is not None
    norm_sq = jnp.full(alpha.shape[:1], jnp.nan, dtype) if norm_sq is None else jnp.asarray(norm_sq, dtype)
    tol = jnp.asarray(tol, dtype)

    norms_sq = jnp.diagonal(gram)

    def single(a, c, n):
        return _gram_pursuit(
            norms_sq,
            lambda lam: gram[:, lam],
            a,
            c,
            n,
            tol,
            k=k,
            normalize_selection=normalize_selection,
            has_norm=has_norm,
        )

    return jax.vmap(single, in_axes=(0, candidates_axis, 0))(
        alpha, _candidate_mask(candidates, gram.shape[0]), norm_sq
    )


@partial(jax.jit, static_argnames=("k", "normalize_selection", "candidates_axis", "dtype"))
def _batched_plain(atoms, targets, candidates, tol, *, k, normalize_selection, candidates_axis, dtype):
    atoms, targets, tol = jnp.asarray(atoms, dtype), jnp.asarray(targets, dtype), jnp.asarray(tol, dtype)

    def single(t, c):
        return _plain_pursuit(atoms, t, c, tol, k=k, normalize_selection=normalize_selection)

    return jax.vmap(single, in_axes=(0, candidates_axis))(
        targets, _candidate_mask(candidates, atoms.shape[0])
    )


# --------------------------------------------------------------------------------------------------
# Public API.


def omp_gram(
    gram: jax.Array,
    alpha: jax.Array,
    k: int,
    *,
    candidates: jax.Array | None = None,
    tol: float | jax.Array = 0.0,
    target_norm_sq: jax.Array | None = None,
    normalize_selection: bool = False,
) -> OMPResult:
    """Batch-OMP from a Gram matrix: sparse codes of B targets over M atoms, at most ``k`` atoms each.

    Args:
      gram: (M, M) ``atoms @ atoms.T``.
      alpha: (B, M) ``targets @ atoms.T``.
      k: static maximum number of atoms per target (>= 1; may exceed the number of candidates).
      candidates: optional bool mask, (M,) shared by the batch or (B, M) per target; masked atoms
        are never chosen. Zero-norm atoms are never chosen either.
      tol: relative tolerance: a target stops once ``||r||^2 <= tol * ||y||^2``. Needs
        ``target_norm_sq`` when nonzero.
      target_norm_sq: optional (B,) ``||y||^2``; gives ``residual_norm_sq`` and enables ``tol``.
      normalize_selection: choose by ``|<atom, r>| / ||atom||`` instead of ``|<atom, r>|`` (the
        least-squares fit always uses the raw atoms).

    Returns:
      :class:`OMPResult` with support (B, k), coef (B, k), residual_norm_sq (B,) (NaN without
      ``target_norm_sq``) and n_atoms (B,).
    """
    k = _check_k(k)
    if np.ndim(gram) != 2 or np.shape(gram)[0] != np.shape(gram)[1]:
        raise _shape_error("gram", "a square (M, M) matrix", gram)
    n_atoms = np.shape(gram)[0]
    if np.ndim(alpha) != 2 or np.shape(alpha)[1] != n_atoms:
        raise _shape_error("alpha", f"(B, M) = (B, {n_atoms}) to match gram {tuple(np.shape(gram))}", alpha)
    batch = np.shape(alpha)[0]
    _check_tol(tol)
    if target_norm_sq is not None and np.shape(target_norm_sq) != (batch,):
        raise _shape_error(
            "target_norm_sq", f"({batch},) to match alpha {tuple(np.shape(alpha))}", target_norm_sq
        )
    if target_norm_sq is None and not (isinstance(tol, (int, float, np.number)) and tol == 0):
        raise ValueError("tol: a nonzero relative tolerance needs target_norm_sq (B,) = ||targets||^2")
    return _batched_gram(
        gram,
        alpha,
        candidates,
        target_norm_sq,
        tol,
        k=k,
        normalize_selection=bool(normalize_selection),
        candidates_axis=_candidates_axis(candidates, batch, n_atoms),
        dtype=_float_dtype(gram, alpha),
    )


def omp_columns(
    column: Callable[[jax.Array], jax.Array],
    norms_sq: jax.Array,
    alpha: jax.Array,
    k: int,
    *,
    candidates: jax.Array | None = None,
    tol: float | jax.Array = 0.0,
    target_norm_sq: jax.Array | None = None,
    normalize_selection: bool = False,
) -> OMPResult:
    """Batch-OMP without a stored Gram matrix: the same pursuit as ``omp_gram`` (same result up to float
    rounding), reading each chosen atom's Gram column from ``column`` when it is chosen. For banks whose
    (M, M) Gram matrix would not fit: k columns cost k·M·d, not M²·d. Call it inside ``jit``.

    Args:
      column: int32 index i -> (M,) ``atoms @ atoms[i]`` (vmapped over the batch).
      norms_sq: (M,) squared atom norms (the Gram diagonal).
      alpha, k, candidates, tol, target_norm_sq, normalize_selection: as for ``omp_gram``.
    """
    k = _check_k(k)
    n_atoms = np.shape(norms_sq)[0]
    if np.ndim(alpha) != 2 or np.shape(alpha)[1] != n_atoms:
        raise _shape_error("alpha", f"(B, M) = (B, {n_atoms}) to match norms_sq", alpha)
    _check_tol(tol)
    dtype = _float_dtype(norms_sq, alpha)
    alpha = jnp.asarray(alpha, dtype)
    has_norm = target_norm_sq is not None
    if not has_norm and not (isinstance(tol, (int, float, np.number)) and tol == 0):
        raise ValueError("tol: a nonzero relative tolerance needs target_norm_sq (B,) = ||targets||^2")
    norm_sq = (
        jnp.full(alpha.shape[:1], jnp.nan, dtype) if not has_norm else jnp.asarray(target_norm_sq, dtype)
    )
    norms_sq, tol = jnp.asarray(norms_sq, dtype), jnp.asarray(tol, dtype)

    def single(a, c, n):
        return _gram_pursuit(
            norms_sq,
            lambda lam: jnp.asarray(column(lam), dtype),
            a,
            c,
            n,
            tol,
            k=k,
            normalize_selection=bool(normalize_selection),
            has_norm=has_norm,
        )

    axis = _candidates_axis(candidates, alpha.shape[0], n_atoms)
    return jax.vmap(single, in_axes=(0, axis, 0))(alpha, _candidate_mask(candidates, n_atoms), norm_sq)


def omp(
    atoms: jax.Array,
    targets: jax.Array,
    k: int,
    *,
    candidates: jax.Array | None = None,
    tol: float | jax.Array = 0.0,
    normalize_selection: bool = False,
) -> OMPResult:
    """Plain OMP: sparse codes of B targets over M atoms, recomputing ``atoms @ residual`` each step.

    Args:
      atoms: (M, d) dictionary, one atom per row.
      targets: (B, d).
      k: static maximum number of atoms per target (>= 1; may exceed the number of candidates).
      candidates: optional bool mask, (M,) shared or (B, M) per target; masked atoms are never chosen.
      tol: relative tolerance: a target stops once ``||r||^2 <= tol * ||y||^2``.
      normalize_selection: choose by ``|<atom, r>| / ||atom||`` (the fit uses the raw atoms).

    Returns:
      :class:`OMPResult`; ``residual_norm_sq`` (B,) is the norm of the true residual.
    """
    k = _check_k(k)
    if np.ndim(atoms) != 2:
        raise _shape_error("atoms", "(M, d)", atoms)
    n_atoms, dim = np.shape(atoms)
    if np.ndim(targets) != 2 or np.shape(targets)[1] != dim:
        raise _shape_error("targets", f"(B, d) = (B, {dim}) to match atoms {tuple(np.shape(atoms))}", targets)
    batch = np.shape(targets)[0]
    _check_tol(tol)
    return _batched_plain(
        atoms,
        targets,
        candidates,
        tol,
        k=k,
        normalize_selection=bool(normalize_selection),
        candidates_axis=_candidates_axis(candidates, batch, n_atoms),
        dtype=_float_dtype(atoms, targets),
    )


def _check_code(support: Any, coef: Any, atoms: Any) -> None:
    if np.ndim(support) != 2:
        raise _shape_error("support", "(B, k)", support)
    if np.shape(coef) != np.shape(support):
        raise _shape_error("coef", f"{tuple(np.shape(support))} to match support", coef)
    if np.ndim(atoms) != 2:
        raise _shape_error("atoms", "(M, d)", atoms)


def reconstruct(support: jax.Array, coef: jax.Array, atoms: jax.Array) -> jax.Array:
    """``D^T c``: (B, d) reconstructions from support (B, k), coef (B, k) and atoms (M, d).

    Slots with support -1 contribute nothing. The codes are scattered into a dense (B, M) matrix
    and multiplied by the atoms: one matmul, without gathering a (B, k, d) copy of the atoms.
    """
    _check_code(support, coef, atoms)
    return _reconstruct(support, coef, atoms, dtype=_float_dtype(coef, atoms))


@partial(jax.jit, static_argnames=("dtype",))
def _reconstruct(support, coef, atoms, *, dtype):
    support, atoms = jnp.asarray(support), jnp.asarray(atoms, dtype)
    used = support >= 0
    rows = jnp.broadcast_to(jnp.arange(support.shape[0])[:, None], support.shape)
    dense = jnp.zeros((support.shape[0], atoms.shape[0]), dtype)
    dense = dense.at[rows, jnp.where(used, support, 0)].add(jnp.where(used, jnp.asarray(coef, dtype), 0))
    return dense @ atoms


def residual(support: jax.Array, coef: jax.Array, atoms: jax.Array, targets: jax.Array) -> jax.Array:
    """``targets - D^T c``: (B, d) residuals (the anomalous part) for targets (B, d)."""
    _check_code(support, coef, atoms)
    expected = (np.shape(support)[0], np.shape(atoms)[1])
    if np.shape(targets) != expected:
        raise _shape_error("targets", f"{expected} to match support and atoms", targets)
    return jnp.asarray(targets) - reconstruct(support, coef, atoms)
