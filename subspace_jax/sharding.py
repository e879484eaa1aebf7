"""Scoring on many devices and many hosts with ``jax.sharding`` (no ``pmap``).

A mesh has two axes: ``"data"`` splits the test images of a batch, ``"bank"`` splits the memory
bank's rows (the N training images). ``shard_model`` places a fitted ``Model`` on a mesh: bank rows
over ``"bank"`` (zero rows pad N to a multiple of the axis size; they are never candidates, since
every pursuit ranges over indices < N), the Gram matrices replicated. ``score_features`` /
``score_images`` run the model's own pure scorer under ``shard_map``: each device correlates the test
maps with the rows it holds, the small (B, m) correlations are summed over ``"bank"``, the Batch-OMP
runs on the replicated Gram matrix, and each device adds its chosen rows' share of the reconstruction,
summed over ``"bank"`` again. So no device ever holds the whole bank, and no collective gathers it
(``tests/test_sharding.py`` checks the compiled program's per-device argument bytes and collectives).
Pixel mode is the exception in part: each device of a data row assembles its test images' candidate
maps (λ rows per image, summed over ``"bank"``), so with ``sampling="none"`` (λ = N) that is the
whole bank, one image at a time; shard the bank with subspace or random sampling.

    mesh = sj.sharding.make_mesh(data=2, bank=4)
    sharded = sj.sharding.shard_model(model, mesh)
    maps, scores = sharded.score(images, batch_size=16, mesh=mesh)

Many hosts: ``initialize_distributed`` wraps ``jax.distributed.initialize`` (and selects the gloo
collectives on CPU); ``global_batch`` turns each process's share of a batch into one global array
with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from subspace_jax.methods.subspace import model as model_lib
from subspace_jax.ops import execution as execution_lib

__all__ = [
    "BANK",
    "DATA",
    "global_batch",
    "initialize_distributed",
    "make_mesh",
    "parse_mesh",
    "score_features",
    "score_images",
    "shard_model",
]

DATA, BANK = "data", "bank"
Array = jax.Array


def make_mesh(data: int, bank: int = 1, devices: Any = None) -> Mesh:
    """A (data, bank) mesh over the first data·bank of ``devices`` (default ``jax.devices()``, all
    processes' devices in process order, so with several hosts each data row lies on one host when
    ``bank`` divides the devices per host)."""
    for name, value in (("data", data), ("bank", bank)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
    devices = list(jax.devices() if devices is None else devices)
    if data * bank > len(devices):
        raise ValueError(
            f"make_mesh: data·bank = {data}·{bank} = {data * bank} devices requested, "
            f"only {len(devices)} available ({devices[0].platform})"
        )
    return Mesh(np.asarray(devices[: data * bank], dtype=object).reshape(data, bank), (DATA, BANK))


def parse_mesh(text: str) -> tuple[int, int]:
    """``"DATA,BANK"`` (or ``"DATA"``) -> (data, bank), for the runners' ``--mesh``."""
    parts = text.split(",")
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) not in (1, 2) or min(values) < 1:
        raise ValueError(f"--mesh: expected DATA,BANK with positive ints (e.g. 4,2), got {text!r}")
    return (values[0], values[1] if len(values) == 2 else 1)


def _put(value: Any, sharding: NamedSharding, rows: int | None = None) -> Array:
    """``value`` as a global array with ``sharding``, zero-padded to ``rows`` along axis 0.

    Built shard by shard from host memory (``make_array_from_callback``), so it also works when the
    mesh spans processes (each process fills its own devices) and no device receives more than its
    shard."""
    host = np.asarray(value)
    if rows is not None and rows > host.shape[0]:
        host = np.concatenate([host, np.zeros((rows - host.shape[0],) + host.shape[1:], host.dtype)])
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def shard_model(model: model_lib.Model, mesh: Mesh) -> model_lib.Model:
    """``model`` placed on ``mesh``: bank rows over ``"bank"``, everything else replicated.

    Banks (N, h, w, c) and the sampling bank (N, d_s) are zero-padded to N_pad, the next multiple of
    the ``"bank"`` axis size, so each device holds N_pad / bank rows; Gram matrices stay (N, N).
    The returned model scores like the original (``Model.score(..., mesh=mesh)``, or this module's
    ``score_features``); without a mesh it also scores on one device (the padding is ignored).
    """
    if not isinstance(model, model_lib.Model):
        raise ValueError(f"model: expected a subspace_jax Model, got {type(model).__name__}")
    shards = mesh.shape[BANK]
    n = model.n_train
    rows = -(-n // shards) * shards
    by_rows, replicated = NamedSharding(mesh, P(BANK)), NamedSharding(mesh, P())
    banks = {key: _put(value, by_rows, rows) for key, value in model.banks.items()}
    grams = {key: _put(value, replicated) for key, value in model.grams.items()}
    sampling_bank = None if model.sampling_bank is None else _put(model.sampling_bank, by_rows, rows)
    sampling_gram = None if model.sampling_gram is None else _put(model.sampling_gram, replicated)
    projections = (
        None
        if model.projections is None
        else {key: _put(value, replicated) for key, value in model.projections.items()}
    )
    out = dataclasses.replace(
        model,
        banks=banks,
        grams=grams,
        sampling_bank=sampling_bank,
        sampling_gram=sampling_gram,
        projections=projections,
    )
    bound = getattr(model, "_backbone", None)
    if bound is not None:  # keep the checked backbone binding of the original
        object.__setattr__(out, "_backbone", bound)
    return out


def _model_specs(model: model_lib.Model) -> model_lib.Model:
    """The ``shard_map`` in_specs of a model: rows of the banks over ``"bank"``, the rest replicated."""
    return dataclasses.replace(
        model,
        banks={key: P(BANK) for key in model.banks},
        grams={key: P() for key in model.grams},
        sampling_bank=None if model.sampling_bank is None else P(BANK),
        sampling_gram=None if model.sampling_gram is None else P(),
        projections=None if model.projections is None else {key: P() for key in model.projections},
    )


def _check_batch(batch: int, mesh: Mesh) -> None:
    if batch % mesh.shape[DATA]:
        raise ValueError(
            f"batch: {batch} images do not split over the mesh's data axis of size {mesh.shape[DATA]}; "
            "use a batch size that is a multiple of it"
        )


def score_features(
    model: model_lib.Model,
    features: Mapping[str, Array],
    mesh: Mesh,
    out_size: tuple[int, int] | None = None,
    *,
    execution: execution_lib.Execution | None = None,
) -> tuple[Array, Array]:
    """``subspace_jax.model.score_features`` on ``mesh`` (pure; call it inside ``jax.jit``).

    Args:
      model: a model from ``shard_model(model, mesh)`` (banks padded to a multiple of ``"bank"``).
      features: level key -> (B, h, w, c) test features, B a multiple of the ``"data"`` axis size.
      mesh: a mesh from ``make_mesh``.
      out_size, execution: as for ``model.score_features``; the bank axis is set here.

    Returns:
      maps (B, H, W) and scores (B,) float32, sharded over ``"data"``.
    """
    feats = model_lib._select_features(features, model.config)
    _check_batch(next(iter(feats.values())).shape[0], mesh)
    if out_size is None:
        out_size = (model.config.output_size, model.config.output_size)
    execution = dataclasses.replace(execution_lib.resolve(execution), bank_axis=BANK)
    body = functools.partial(model_lib.score_features, out_size=tuple(out_size), execution=execution)
    # Outputs are equal on every device of a data row (each one finishes the same pursuit after the
    # sums over "bank"), so they are declared replicated over "bank" without a check.
    return jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(_model_specs(model), {key: P(DATA) for key in feats}),
        out_specs=(P(DATA), P(DATA)),
        check_vma=False,
    )(model, feats)


def score_images(
    model: model_lib.Model,
    apply_fn: Callable,
    params: Any,
    images: Array,
    mesh: Mesh,
    *,
    execution: execution_lib.Execution | None = None,
) -> tuple[Array, Array]:
    """``subspace_jax.model.score_images`` on ``mesh`` (pure; call it inside ``jax.jit``): the backbone
    runs data-parallel on images sharded over ``"data"`` (params replicated), then ``score_features``."""
    _check_batch(images.shape[0], mesh)
    images = jax.lax.with_sharding_constraint(images, NamedSharding(mesh, P(DATA)))
    features = apply_fn(params, images)
    features = {key: features[key] for key in model.config.feature_keys}
    return score_features(model, features, mesh, tuple(images.shape[1:3]), execution=execution)


_score_images_jit = jax.jit(score_images, static_argnums=(1, 4), static_argnames=("execution",))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of ``tree`` replicated on ``mesh`` (e.g. backbone params)."""
    replicated = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(lambda leaf: _put(leaf, replicated), tree)


def global_batch(local: np.ndarray, mesh: Mesh) -> Array:
    """One global array sharded over ``"data"`` from this process's consecutive share of a batch
    (``jax.make_array_from_process_local_data``; on one process, the whole batch)."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P(DATA)), np.asarray(local))


def process_share(n: int) -> slice:
    """The slice of n items (test images) this process reads: consecutive, in process order, equal
    shares (the caller pads n to a multiple of the process count)."""
    count, index = jax.process_count(), jax.process_index()
    if n % count:
        raise ValueError(f"process_share: {n} items do not split over {count} processes; pad them first")
    share = n // count
    return slice(index * share, (index + 1) * share)


def initialize_distributed(
    coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> None:
    """``jax.distributed.initialize`` with the given coordinator ``HOST:PORT``, process count and id
    (all None: auto-detection on TPU pods, SLURM, Open MPI...). On CPU it first selects the gloo
    collectives, so processes on one or several machines form one job with cross-process collectives.
    Must run before anything else touches JAX's devices."""
    explicit = [coordinator, num_processes, process_id]
    if any(v is not None for v in explicit) and any(v is None for v in explicit):
        raise ValueError(
            "--coordinator, --num-processes and --process-id: give all three, or none for auto-detection"
        )
    platforms = str(jax.config.jax_platforms or "")
    if not platforms or "cpu" in platforms.split(","):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


_score_features_jit = jax.jit(score_features, static_argnums=(2, 3), static_argnames=("execution",))


def on_mesh(model: model_lib.Model, mesh: Mesh) -> bool:
    """Whether ``model`` was placed on ``mesh`` by ``shard_model``."""
    leaf = next(iter(model.grams.values()))
    placed = getattr(leaf, "sharding", None)
    return isinstance(placed, NamedSharding) and placed.mesh == mesh


def placed(model: Any, mesh: Mesh) -> model_lib.Model:
    """``model`` on ``mesh`` (``shard_model`` unless it is there already); only the subspace model
    shards (the baselines' nearest-neighbour search would need a cross-shard top-k of its own)."""
    if not isinstance(model, model_lib.Model):
        raise ValueError(
            f"mesh: sharded scoring is implemented for the subspace Model, not {type(model).__name__}; "
            "score baselines without a mesh"
        )
    return model if on_mesh(model, mesh) else shard_model(model, mesh)


def local_batch_size(batch_size: int, mesh: Mesh) -> int:
    """This process's rows of a global batch: ``batch_size`` rounded up to a multiple of the data
    axis, divided by the process count."""
    data, processes = mesh.shape[DATA], jax.process_count()
    if data % processes:
        raise ValueError(
            f"mesh: the data axis ({data}) must be a multiple of the process count ({processes}), "
            "so that every process feeds whole rows of each batch"
        )
    return -(-batch_size // data) * data // processes


def local_rows(array: Array) -> np.ndarray:
    """This process's rows of an array sharded over ``"data"`` (all rows on one process), as numpy:
    the rows it fed through ``global_batch``, in order."""
    if jax.process_count() == 1:
        return np.asarray(array)
    blocks: dict[int, Any] = {}
    for shard in array.addressable_shards:
        blocks.setdefault(shard.index[0].start or 0, shard.data)  # devices of one data row agree
    return np.concatenate([np.asarray(blocks[start]) for start in sorted(blocks)])


def score_block(
    model: model_lib.Model,
    block: Mapping[str, np.ndarray] | np.ndarray,
    mesh: Mesh,
    *,
    bound: Any = None,
    execution: execution_lib.Execution | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Score this process's share of one global batch: features (a dict) or images (with ``bound``,
    a ``batching.BoundBackbone`` whose params are replicated on ``mesh``). Returns this process's
    maps and scores as numpy. Every process must call it the same number of times."""
    if isinstance(block, Mapping):
        feats = {key: global_batch(value, mesh) for key, value in block.items()}
        maps, scores = _score_features_jit(model, feats, mesh, None, execution=execution)
    else:
        images = global_batch(block, mesh)
        maps, scores = _score_images_jit(
            model, bound.apply_fn, bound.params, images, mesh, execution=execution
        )
    return local_rows(maps), local_rows(scores)
