"""The subspace model's pure kernels: sampling, per-level pursuit and residual maps (``docs/method.md``).

- ``sample_candidates``: per test image, the λ candidate training images (subspace-guided sampling by
  OMP at the sampling level, a seeded random draw, or all N).
- ``image_pursuit``: Batch-OMP of test maps on the candidate rows of a bank (gathered per image, or
  the whole bank masked, whichever ``subspace_jax.ops.execution`` chooses), and the residuals.
- ``reconstruct_levels``: per reconstruction level, the (B, h, w) channel norm of the residual (image
  atoms, or pixel atoms in a window).

Everything is pure with static shapes. Bank rows may be sharded over a mesh axis
(``execution.bank_axis``, set by ``subspace_jax.sharding``): the helpers below then compute what
involves rows where the rows live and combine the partial results with one collective over that axis,
so the bank itself never moves. With ``axis=None`` they are the one-device code. Functions take the
fitted ``SubspaceModel`` (a pytree whose config is static) as ``model``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from subspace_jax.methods.base import level_key
from subspace_jax.methods.subspace.config import SubspaceConfig
from subspace_jax.ops import execution as execution_lib
from subspace_jax.ops import omp as omp_lib
from subspace_jax.ops.aggregation import aggregate
from subspace_jax.ops.execution import Execution

__all__ = [
    "Candidates",
    "check_feature_shapes",
    "image_pursuit",
    "prepare_level",
    "reconstruct_levels",
    "sample_candidates",
]

Array = jax.Array
Features = Mapping[str, Array]  # "level1".."level4" -> (B, h, w, c); "pooled" -> (B, c)


def _full_float32(fn: Callable) -> Callable:
    """Run ``fn``'s matrix products at full float32 precision.

    Accelerators may round float32 products to TF32 or bfloat16 by default; residuals are small
    differences of large terms, so the pursuit and the reconstruction ask for full precision (on
    CPU this changes nothing).
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)

    return wrapper


class Candidates(NamedTuple):
    """Training images a test image may be rebuilt from (output of ``sample_candidates``).

    indices: (B, m) int32 image indices into the bank (0 where unused).
    valid: (B, m) bool, False for unused slots.
    """

    indices: Array
    valid: Array


@_full_float32
def sample_candidates(model: Any, features: Features, *, execution: Execution | None = None) -> Candidates:
    """Per test image, the candidate training images of the reconstruction (pure, jittable).

    ``"subspace"``: OMP with ``lam`` atoms at the sampling level over all N images (m = lam);
    ``"random"``: ``lam`` images drawn once from ``seed``, the same for every test image;
    ``"none"``, or ``lam >= N``: all N images (m = N). ``execution`` only matters inside
    ``subspace_jax.sharding`` (its ``bank_axis``); results never depend on it.
    """
    check_feature_shapes(model, features)
    cfg = model.config
    n = model.n_train
    batch = next(iter(features.values())).shape[0]
    if cfg.sampling == "none" or cfg.lam >= n:
        indices = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32), (batch, n))
        return Candidates(indices, jnp.ones((batch, n), bool))
    if cfg.sampling == "random":
        chosen = jnp.sort(jax.random.choice(jax.random.PRNGKey(cfg.seed), n, (cfg.lam,), replace=False))
        indices = jnp.broadcast_to(chosen.astype(jnp.int32), (batch, cfg.lam))
        return Candidates(indices, jnp.ones((batch, cfg.lam), bool))
    if model.sampling_bank is None:
        raise ValueError(
            "model: subspace sampling needs the sampling-level bank, which this model lacks (it was fit "
            "with another sampling mode); refit it with sampling='subspace'"
        )
    axis = execution_lib.resolve(execution).bank_axis
    target = features[level_key(cfg.sampling_level)].reshape(batch, -1).astype(jnp.float32)
    result = _omp_on_bank(model.sampling_bank, model.sampling_gram, target, cfg.lam, None, cfg, axis, n)
    support = result.support
    return Candidates(jnp.maximum(support, 0).astype(jnp.int32), support >= 0)


# Bank rows may be sharded over a mesh axis (``subspace_jax.sharding``): inside ``shard_map`` each
# device holds rows [offset, offset + n_local) of the (possibly zero-padded) bank. The helpers below
# compute what involves rows where the rows live and combine the partial results with one collective
# over that axis, so the bank itself never moves. With ``axis=None`` they are the one-device code.


def _psum(x: Array, axis: str | None) -> Array:
    return x if axis is None else jax.lax.psum(x, axis)


def _take_rows(atoms: Array, indices: Array, axis: str | None) -> Array:
    """``atoms[indices]`` as float32 (indices global, any shape); with a sharded bank, the rows held
    on this device and zeros for the others, so ``_psum`` of anything linear in them completes it."""
    if axis is None:
        return atoms[indices].astype(jnp.float32)
    n_local = atoms.shape[0]
    local = indices - jax.lax.axis_index(axis) * n_local
    here = (local >= 0) & (local < n_local)
    rows = atoms[jnp.clip(local, 0, n_local - 1)].astype(jnp.float32)
    return jnp.where(here.reshape(here.shape + (1,) * (rows.ndim - here.ndim)), rows, 0.0)


def _bank_correlations(atoms: Array, targets: Array, n: int, axis: str | None) -> Array:
    """α = targets @ D[:n]ᵀ: (B, n) float32 for targets (B, d) and the first n bank rows.

    Sharded: each device correlates with its rows and the (B, n_local) blocks are gathered (B·N
    floats move, not the N·d bank)."""
    if axis is None:
        return targets @ atoms[:n].astype(jnp.float32).T
    local = targets @ atoms.astype(jnp.float32).T
    return jax.lax.all_gather(local, axis, axis=1, tiled=True)[:, :n]


def _bank_reconstruct(support: Array, coef: Array, atoms: Array, n: int, axis: str | None) -> Array:
    """Dᵀc: (B, d) from support and coef (B, k) over the first n bank rows (unused slots -1)."""
    if axis is None:
        return omp_lib.reconstruct(support, coef, atoms[:n])
    n_local = atoms.shape[0]
    used = support >= 0
    rows = jnp.broadcast_to(jnp.arange(support.shape[0])[:, None], support.shape)
    dense = jnp.zeros((support.shape[0], n_local * jax.lax.axis_size(axis)), jnp.float32)
    dense = dense.at[rows, jnp.where(used, support, 0)].add(jnp.where(used, coef, 0.0))
    mine = jax.lax.dynamic_slice_in_dim(dense, jax.lax.axis_index(axis) * n_local, n_local, axis=1)
    return jax.lax.psum(mine @ atoms.astype(jnp.float32), axis)


def check_feature_shapes(model: Any, features: Features) -> None:
    """ValueError naming the key unless test ``features`` fit the model's banks: one batch size B,
    each reconstruction level (B, h_l, w_l, c_l) like its bank, the sampling level holding d_s values
    per image like the sampling bank. Shapes are static, so this also runs under ``jit``."""
    cfg = model.config
    missing = [key for key in cfg.feature_keys if key not in features]
    if missing:
        raise ValueError(f"features: missing {missing}; this config needs {list(cfg.feature_keys)}")
    shapes = {key: tuple(np.shape(features[key])) for key in cfg.feature_keys}
    batch = {key: (shape[0] if shape else None) for key, shape in shapes.items()}
    if len(set(batch.values())) != 1 or None in batch.values():
        raise ValueError(f"features: every key needs the same batch size B, got {batch}")
    for level in cfg.levels:
        key = level_key(level)
        expected = tuple(model.banks[key].shape[1:])
        if key in (model.projections or {}):  # the bank holds c′ projected channels, the features c
            expected = expected[:-1] + (model.projections[key].shape[0],)
        if shapes[key][1:] != expected:
            raise ValueError(
                f"features[{key!r}]: expected (B, {', '.join(map(str, expected))}) like the bank, got "
                f"{shapes[key]}; were the images resized to the model's image_size/crop?"
            )
    if cfg.sampling == "subspace" and model.sampling_bank is not None:
        key = level_key(cfg.sampling_level)
        d = model.sampling_bank.shape[1]
        if int(np.prod(shapes[key][1:])) != d or len(shapes[key]) < 2:
            raise ValueError(
                f"features[{key!r}]: expected {d} values per image like the sampling bank, got shape "
                f"{shapes[key]}"
            )


def _bank_column(bank: Array, index: Array, n: int, axis: str | None) -> Array:
    """Column ``index`` of the bank's Gram matrix, D[:n] D[index] (n,) float32, computed from the rows
    (banks too large for a stored Gram matrix). Sharded: the chosen row is assembled from its owner
    (one (d,) sum) and the (n_local,) products are gathered."""
    row = _psum(_take_rows(bank, index, axis), axis)
    if axis is None:
        return bank[:n].astype(jnp.float32) @ row
    local = bank.astype(jnp.float32) @ row
    return jax.lax.all_gather(local, axis, tiled=True)[:n]


def _bank_norms(bank: Array, n: int, axis: str | None) -> Array:
    """(n,) squared norms of the bank rows (the Gram diagonal), float32."""
    local = jnp.sum(jnp.square(bank.astype(jnp.float32)), axis=-1)
    if axis is None:
        return local[:n]
    return jax.lax.all_gather(local, axis, tiled=True)[:n]


def _omp_on_bank(
    bank: Array,
    gram: Array | None,
    targets: Array,
    k: int,
    candidates: Array | None,
    cfg: SubspaceConfig,
    axis=None,
    n: int | None = None,
):
    """Batch-OMP of float32 targets (B, d) on the first n rows of a bank (N, d): from its Gram matrix
    (N, N) when the model keeps one, else with Gram columns computed from the rows as atoms are chosen."""
    n = gram.shape[0] if gram is not None else n
    alpha = _bank_correlations(bank, targets, n, axis)
    options = dict(
        candidates=candidates,
        tol=cfg.tol,
        target_norm_sq=jnp.sum(targets * targets, axis=-1),
        normalize_selection=cfg.normalize_selection,
    )
    if gram is not None:
        return omp_lib.omp_gram(gram, alpha, k, **options)
    return omp_lib.omp_columns(
        lambda i: _bank_column(bank, i, n, axis), _bank_norms(bank, n, axis), alpha, k, **options
    )


def _map_in_chunks(fn: Callable, xs: Any, width: int) -> Any:
    """``fn`` maps a chunk (leading axis ``width``) of the pytree ``xs`` (leading axis B) to a pytree
    with the same leading axis; apply it to ``ceil(B / width)`` chunks one after another (``lax.map``),
    the last one padded with copies of the first rows (results dropped). A symbolic B (``jax.export``
    with any batch size) is mapped one row at a time: no padding to a multiple of an unknown size."""
    batch = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if not execution_lib.is_concrete(batch):
        one = jax.lax.map(lambda x: fn(jax.tree_util.tree_map(lambda a: a[None], x)), xs)
        return jax.tree_util.tree_map(lambda y: y[:, 0], one)
    width = max(1, min(width, batch))
    if width == batch:
        return fn(xs)
    chunks = -(-batch // width)
    pad = chunks * width - batch

    def split(x):
        if pad:
            x = jnp.concatenate([x, x[:pad]])
        return x.reshape((chunks, width) + x.shape[1:])

    out = jax.lax.map(fn, jax.tree_util.tree_map(split, xs))
    return jax.tree_util.tree_map(lambda y: y.reshape((chunks * width,) + y.shape[2:])[:batch], out)


@_full_float32
def reconstruct_levels(
    model: Any, features: Features, candidates: Candidates, *, execution: Execution | None = None
) -> dict[str, Array]:
    """Per reconstruction level, the (B, h_l, w_l) channel norm of the reconstruction residual.

    ``execution`` (``subspace_jax.execution``) sets the vectorisation widths and the gathered/masked
    choice; the default is the backend's. It never changes the result beyond float rounding.
    """
    cfg = model.config
    execution = execution_lib.resolve(execution)
    out = {}
    for level in cfg.levels:
        key = level_key(level)
        bank, target = model.banks[key], prepare_level(model, key, features[key])
        if target.shape[1:] != bank.shape[1:]:
            raise ValueError(
                f"features[{key!r}]: expected (B, {', '.join(map(str, bank.shape[1:]))}) like the bank, "
                f"got {target.shape}; were the images resized to the model's image_size/crop?"
            )
        if cfg.reconstruction == "image":
            gram = None if model.grams is None else model.grams[key]
            out[key] = _image_level_map(bank, gram, target, candidates, cfg, execution, model.n_train)
        else:
            out[key] = _pixel_level_map(bank, target, candidates, cfg, execution)
    return out


def prepare_level(model: Any, key: str, features: Array) -> Array:
    """(B, h, w, c) test features of a reconstruction level -> what its bank holds: aggregated
    (``config.aggregate``), then projected to c′ channels when the model has a projection for it."""
    features = aggregate(features, model.config.aggregate)
    if key in (model.projections or {}):
        features = jnp.matmul(jnp.asarray(features, jnp.float32), model.projections[key])
    return features


def _image_level_map(
    bank: Array,
    gram: Array | None,
    target: Array,
    candidates: Candidates,
    cfg: SubspaceConfig,
    execution: Execution,
    n: int,
) -> Array:
    """Whole-map atoms: y_l ≈ D_lᵀc with ‖c‖₀ ≤ k among the candidates; returns (B, h, w) ‖e‖_c."""
    _, h, w, c = bank.shape
    batch = target.shape[0]
    y = target.reshape(batch, -1).astype(jnp.float32)
    _, residual = image_pursuit(bank.reshape(bank.shape[0], -1), gram, y, candidates, cfg, execution, n)
    return jnp.linalg.norm(residual.reshape(batch, h, w, c), axis=-1)


def image_pursuit(
    atoms: Array,
    gram: Array | None,
    targets: Array,
    candidates: Candidates,
    cfg: SubspaceConfig,
    execution: Execution | None = None,
    n: int | None = None,
) -> tuple[omp_lib.OMPResult, Array]:
    """Batch-OMP of targets on the candidate rows of a bank, and the residuals e = y − D_lᵀc.

    Args:
      atoms: (N, d) bank rows (any float dtype; upcast to float32 after gathering). Inside
        ``shard_map`` with ``execution.bank_axis`` set: this device's (N_pad / shards, d) rows.
      gram: (N, N) float32 ``atoms @ atoms.T`` (N real rows: padding rows are never candidates), or
        None for a bank without a stored Gram matrix: the gathered path then takes the candidates'
        Gram columns from their rows (``omp_columns``), the masked path from the whole bank.
      targets: (B, d) float32.
      candidates: (B, m) from ``sample_candidates``; m = N means every image is a candidate.
      cfg: gives k, tol and normalize_selection.
      execution: vectorisation width, gathered/masked choice, bank axis (default: the backend's).
      n: N, the real rows (needed without ``gram``; a sharded bank is padded).

    Returns:
      the ``OMPResult`` (support (B, k) as bank indices, -1 unused) and the residuals (B, d) float32.

    Sampling exists to touch only the m candidate rows (``docs/method.md``, "Computation"). When
    ``execution.gathers`` (on CPU m ≤ N/2, the usual λ ≪ N) that is what happens: per test image
    the rows D[idx] (m, d) are gathered, α = D[idx] y (m,), Batch-OMP runs on the Gram submatrix
    G[idx][:, idx] (m, m) and the residual is rebuilt from the k chosen rows. W test images are
    processed at once (vmapped), W = ``memory_budget_bytes`` / (m·d·4) in [1, B], chunks one after
    another, so memory holds W (m, d) float32 blocks. Otherwise the correlations are one batched
    product α = y Dᵀ against the whole bank, with the non-candidates masked out: gathering is
    memory-bound and per image, the whole-bank product compute-bound and shared by the batch; on
    CPU the two cost the same near m = N/2 (``benchmarks/bench_gather.md``).
    """
    execution = execution_lib.resolve(execution)
    axis = execution.bank_axis
    atoms = jnp.asarray(atoms)
    gram = None if gram is None else jnp.asarray(gram, jnp.float32)
    n = gram.shape[0] if gram is not None else (atoms.shape[0] if n is None else n)
    batch, m = candidates.indices.shape
    k = min(cfg.k, m)
    if not execution.gathers(batch, m, n):
        rows = jnp.arange(batch)[:, None]
        hits = jnp.zeros((batch, n), bool).at[rows, candidates.indices].max(candidates.valid)
        result = _omp_on_bank(atoms, gram, targets, k, hits, cfg, axis, n)
        return result, targets - _bank_reconstruct(result.support, result.coef, atoms, n, axis)
    # Candidates in bank order, unused slots last: ties in the pursuit then go to the lowest bank
    # index, as they do on the whole bank.
    order = jnp.sort(jnp.where(candidates.valid, candidates.indices, n), axis=1)
    valid = order < n
    indices = jnp.where(valid, order, 0)

    def one_image(y, idx, ok):
        rows = _take_rows(atoms, idx, axis)  # (m, d); sharded: this device's rows, zeros elsewhere
        options = dict(
            candidates=ok,
            tol=cfg.tol,
            target_norm_sq=jnp.sum(y * y)[None],
            normalize_selection=cfg.normalize_selection,
        )
        alpha = _psum(rows @ y, axis)[None]
        if gram is not None:
            local = omp_lib.omp_gram(gram[idx[:, None], idx[None, :]], alpha, k, **options)
        else:  # Gram columns of the candidates from their rows (assembled once when sharded)
            full = _psum(rows, axis)
            norms = jnp.sum(full * full, axis=-1)
            local = omp_lib.omp_columns(lambda i: full @ full[i], norms, alpha, k, **options)
        support = jnp.where(local.support >= 0, idx[jnp.maximum(local.support, 0)], -1)
        # Only the k chosen rows are read again (not the m gathered ones); unused slots weigh 0.
        chosen = _take_rows(atoms, jnp.maximum(support[0], 0), axis)  # (k, d)
        residual = y - _psum(jnp.where(support[0] >= 0, local.coef[0], 0.0) @ chosen, axis)
        return local._replace(support=support), residual

    d = targets.shape[1]
    width = execution_lib.image_width(execution.memory_budget_bytes, batch, 4 * m * d)
    result, residual = _map_in_chunks(
        lambda chunk: jax.vmap(one_image)(*chunk), (targets, indices, valid), width
    )
    # Each image's pursuit ran on a batch of one: drop that axis.
    return jax.tree_util.tree_map(lambda x: x[:, 0], result), residual


def _pixel_level_map(
    bank: Array,
    target: Array,
    candidates: Candidates,
    cfg: SubspaceConfig,
    execution: Execution | None = None,
) -> Array:
    """Per-pixel atoms: each target vector y[i, j] (c,) is rebuilt from the candidate images'
    vectors inside the (2r+1)² window around (i, j) by plain OMP with ``pixel_k`` atoms.

    Vectorised within ``execution.memory_budget_bytes``: the candidate maps of W test images are
    gathered at once ((W, m, h + 2r, w + 2r, c) float32) and P of their W·h·w pixels are pursued at
    once (vmapped, each over (m·(2r+1)², c) atoms); with a large budget that is every pixel of every
    image in the batch in one ``vmap``. With the bank sharded each device gathers the candidate rows
    it holds and one sum over the bank axis assembles them (only candidate rows move).
    """
    execution = execution_lib.resolve(execution)
    axis = execution.bank_axis
    _, h, w, c = bank.shape
    r = cfg.radius
    win = 2 * r + 1
    batch, m = candidates.indices.shape
    n_atoms = m * win * win
    k = min(cfg.pixel_k, n_atoms)
    inside = jnp.pad(jnp.ones((h, w), bool), r)  # window positions that fall inside the map
    per_image = 4 * m * (h + 2 * r) * (w + 2 * r) * c
    # The pixel's atoms, the correlations and the support rows of one plain pursuit, float32.
    per_pixel = 4 * (2 * n_atoms * c + k * c + n_atoms)
    images, pixels = execution_lib.pixel_widths(
        execution.memory_budget_bytes, batch, per_image, h * w, per_pixel
    )

    def image_chunk(chunk):
        y, indices, valid = chunk  # (W, h, w, c), (W, m), (W, m)
        blocks = _psum(_take_rows(bank, indices, axis), axis)  # (W, m, h, w, c)
        padded = jnp.pad(blocks, ((0, 0), (0, 0), (r, r), (r, r), (0, 0)))

        def one_pixel(task):
            b, i, j = task
            atoms = jax.lax.dynamic_slice(padded, (b, 0, i, j, 0), (1, m, win, win, c)).reshape(n_atoms, c)
            ok = jax.lax.dynamic_slice(inside, (i, j), (win, win))
            allowed = (valid[b][:, None, None] & ok[None]).reshape(-1)
            yij = y[b, i, j][None]
            result = omp_lib.omp(
                atoms, yij, k, candidates=allowed, tol=cfg.tol, normalize_selection=cfg.normalize_selection
            )
            residual = yij - omp_lib.reconstruct(result.support, result.coef, atoms)
            return jnp.linalg.norm(residual[0])

        width = y.shape[0]
        b, i, j = jnp.meshgrid(jnp.arange(width), jnp.arange(h), jnp.arange(w), indexing="ij")
        tasks = (b.reshape(-1), i.reshape(-1), j.reshape(-1))
        norms = _map_in_chunks(jax.vmap(one_pixel), tasks, pixels)
        return norms.reshape(width, h, w)

    chunk = (jnp.asarray(target, jnp.float32), candidates.indices, candidates.valid)
    return _map_in_chunks(image_chunk, chunk, images)
