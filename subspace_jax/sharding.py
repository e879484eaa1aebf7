"""Meshes, placement and scoring on many devices and many hosts with ``jax.sharding`` (no ``pmap``).

A mesh has two axes: ``"data"`` splits the test images of a batch, ``"bank"`` splits a memory bank's
rows (the N training images). What goes where is declared by each fitted model, not known here:
``model.partition_specs()`` returns the model with a ``PartitionSpec`` per array field, ``P("bank")``
for the fields split by rows, ``P()`` for the replicated ones. ``shard_model`` places a model as it
declares; ``score_features`` / ``score_images`` run the model's own pure scorer (``model.scorer``) under
``shard_map``, with ``execution.bank_axis`` set so that a scorer that supports it computes what
involves bank rows where the rows live and combines the partial results with collectives.

The subspace model shards its banks: each device correlates the test maps with the rows it holds,
the small (B, m) correlations are summed over ``"bank"``, the Batch-OMP runs on the replicated Gram
matrices, and each device adds its chosen rows' share of the reconstruction, summed again; no device
ever holds the whole bank, and no collective gathers it (``tests/test_sharding.py`` checks the compiled
program's per-device argument bytes and collectives). PatchCore and SPADE declare no row sharding:
they score on a mesh's data axis, and a bank axis larger than 1 is refused with their name.

    mesh = sj.sharding.make_mesh(data=2, bank=4)
    sharded = sj.sharding.shard_model(model, mesh)
    maps, scores = sharded.score(images, batch_size=16, mesh=mesh)

Many processes: ``initialize_distributed`` wraps ``jax.distributed.initialize`` (and selects the gloo
collectives on CPU); ``process_shares`` is the one split of N items over the processes, and
``gather_shares`` puts every process's rows back together; ``global_batch`` turns each process's share
of a batch into one global array with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Mapping
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from subspace_jax._checks import check_int
from subspace_jax.ops import execution as execution_lib

__all__ = [
    "BANK",
    "DATA",
    "gather_rows",
    "gather_shares",
    "global_batch",
    "initialize_distributed",
    "make_mesh",
    "parse_mesh",
    "process_counts",
    "process_shares",
    "score_features",
    "score_images",
    "shard_model",
    "sum_over_processes",
    "wait_for_processes",
]

DATA, BANK = "data", "bank"
Array = jax.Array


def make_mesh(data: int, bank: int = 1, devices: Any = None) -> Mesh:
    """A (data, bank) mesh over the first data·bank of ``devices`` (default ``jax.devices()``, all
    processes' devices in process order, so with several hosts each data row lies on one host when
    ``bank`` divides the devices per host)."""
    data = check_int("data", data, 1)
    bank = check_int("bank", bank, 1)
    devices = list(jax.devices() if devices is None else devices)
    if data * bank > len(devices):
        raise ValueError(
            f"make_mesh: data·bank = {data}·{bank} = {data * bank} devices requested, "
            f"only {len(devices)} available ({devices[0].platform})"
        )
    return Mesh(np.asarray(devices[: data * bank], dtype=object).reshape(data, bank), (DATA, BANK))


def parse_mesh(text: str) -> tuple[int, int]:
    """``"DATA,BANK"`` (or ``"DATA"``) -> (data, bank), for the ``--mesh`` flags."""
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


def _is_spec(node: Any) -> bool:
    return node is None or isinstance(node, P)


def shard_model(model: Any, mesh: Mesh) -> Any:
    """``model`` placed on ``mesh`` as it declares (``model.partition_specs()``): the fields marked
    ``P("bank")`` split by rows over ``"bank"``, zero-padded to N_pad, the next multiple of that axis's
    size (each device holds N_pad / bank rows; a method that shards rows never chooses a padding row);
    everything else replicated. The returned model scores like the original, with or without the mesh.
    """
    _check_bank_axis(model, mesh)
    shards = mesh.shape[BANK]

    def place(spec: P | None, value: Any) -> Any:
        if spec is None or value is None:
            return value
        if spec == P(BANK):
            rows = -(-value.shape[0] // shards) * shards
            return _put(value, NamedSharding(mesh, spec), rows)
        return _put(value, NamedSharding(mesh, P()))

    return jax.tree.map(place, model.partition_specs(), model, is_leaf=_is_spec)


def _check_bank_axis(model: Any, mesh: Mesh) -> None:
    if mesh.shape[BANK] > 1 and not model.scorer.supports_bank_axis:
        raise ValueError(
            f"mesh: {type(model).__name__} cannot split its bank over the mesh's bank axis (size "
            f"{mesh.shape[BANK]}); score it on a mesh with bank=1 (data-parallel) or without a mesh"
        )


def on_mesh(model: Any, mesh: Mesh) -> bool:
    """Whether ``model`` was placed on ``mesh`` by ``shard_model``."""
    leaf = next(iter(jax.tree_util.tree_leaves(model)), None)
    placed = getattr(leaf, "sharding", None)
    return isinstance(placed, NamedSharding) and placed.mesh == mesh


def placed(model: Any, mesh: Mesh) -> Any:
    """``model`` on ``mesh`` (``shard_model`` unless it is there already)."""
    _check_bank_axis(model, mesh)
    return model if on_mesh(model, mesh) else shard_model(model, mesh)


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Every array leaf of ``tree`` replicated on ``mesh`` (e.g. backbone params)."""
    replicated = NamedSharding(mesh, P())
    return jax.tree_util.tree_map(lambda leaf: _put(leaf, replicated), tree)


def _check_batch(batch: int, mesh: Mesh) -> None:
    if batch % mesh.shape[DATA]:
        raise ValueError(
            f"batch: {batch} images do not split over the mesh's data axis of size {mesh.shape[DATA]}; "
            "use a batch size that is a multiple of it"
        )


def score_features(
    model: Any,
    features: Mapping[str, Array],
    mesh: Mesh,
    *,
    execution: execution_lib.Execution | None = None,
) -> tuple[Array, Array]:
    """``model``'s pure ``score_features`` on ``mesh`` (pure; call it inside ``jax.jit``).

    Args:
      model: a model from ``shard_model(model, mesh)``.
      features: level key -> (B, ...) test features, B a multiple of the ``"data"`` axis size.
      mesh: a mesh from ``make_mesh``.
      execution: layout options (``subspace_jax.ops.execution``); the bank axis is set here.

    Returns:
      maps (B, H, W) and scores (B,) float32, sharded over ``"data"``.
    """
    _check_bank_axis(model, mesh)
    scorer = model.scorer
    keys = tuple(scorer.feature_keys(model))
    missing = [key for key in keys if key not in features]
    if missing:
        raise ValueError(f"features: missing {missing}; this model reads {list(keys)}")
    feats = {key: features[key] for key in keys}
    _check_batch(next(iter(feats.values())).shape[0], mesh)
    execution = dataclasses.replace(execution_lib.resolve(execution), bank_axis=BANK)
    body = functools.partial(scorer.score_features, execution=execution)
    # Outputs are equal on every device of a data row (each one finishes the same computation after the
    # sums over "bank"), so they are declared replicated over "bank" without a check.
    return jax.shard_map(
        body,
        mesh=mesh,
        in_specs=(model.partition_specs(), {key: P(DATA) for key in feats}),
        out_specs=(P(DATA), P(DATA)),
        check_vma=False,
    )(model, feats)


def score_images(
    model: Any,
    apply_fn: Callable,
    params: Any,
    images: Array,
    mesh: Mesh,
    *,
    execution: execution_lib.Execution | None = None,
) -> tuple[Array, Array]:
    """``score_features`` from images (pure; call it inside ``jax.jit``): the backbone runs data-parallel
    on images sharded over ``"data"`` (params replicated), then the sharded scorer."""
    _check_batch(images.shape[0], mesh)
    images = jax.lax.with_sharding_constraint(images, NamedSharding(mesh, P(DATA)))
    return score_features(model, apply_fn(params, images), mesh, execution=execution)


_score_features_jit = jax.jit(score_features, static_argnums=(2,), static_argnames=("execution",))
_score_images_jit = jax.jit(score_images, static_argnums=(1, 4), static_argnames=("execution",))


def global_batch(local: np.ndarray, mesh: Mesh) -> Array:
    """One global array sharded over ``"data"`` from this process's consecutive share of a batch
    (``jax.make_array_from_process_local_data``; on one process, the whole batch)."""
    return jax.make_array_from_process_local_data(NamedSharding(mesh, P(DATA)), np.asarray(local))


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
    model: Any,
    block: Mapping[str, np.ndarray] | np.ndarray,
    mesh: Mesh,
    *,
    apply_fn: Callable | None = None,
    params: Any = None,
    execution: execution_lib.Execution | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Score this process's share of one global batch: features (a dict) or images (with the backbone's
    ``apply_fn`` and ``params`` replicated on ``mesh``). Returns this process's maps and scores as numpy.
    Every process must call it the same number of times."""
    if isinstance(block, Mapping):
        feats = {key: global_batch(value, mesh) for key, value in block.items()}
        maps, scores = _score_features_jit(model, feats, mesh, execution=execution)
    else:
        images = global_batch(block, mesh)
        maps, scores = _score_images_jit(model, apply_fn, params, images, mesh, execution=execution)
    return local_rows(maps), local_rows(scores)


# --- many processes ------------------------------------------------------------------------------------


def process_shares(n: int, count: int | None = None, index: int | None = None) -> tuple[list[int], list[int]]:
    """The one split of n items (images) over the processes: consecutive, in process order, as equal as
    possible. Returns (items per process, this process's item indices padded by repeating its last one
    to the longest share, so every process runs as many batches). One process: ([n], all indices)."""
    count = jax.process_count() if count is None else count
    index = jax.process_index() if index is None else index
    n = check_int("n", n, 1)
    share = -(-n // count)
    bounds = [(min(p * share, n), min((p + 1) * share, n)) for p in range(count)]
    lo, hi = bounds[index]
    indices = list(range(lo, hi)) or [n - 1]
    return [b - a for a, b in bounds], indices + [indices[-1]] * (share - len(indices))


def gather_shares(local: np.ndarray, real: list[int]) -> np.ndarray:
    """Every process's first ``real[p]`` rows of ``local`` (same shape on every process), in process
    order, on every process (``process_shares`` inverted)."""
    if len(real) == 1:
        return np.asarray(local)[: real[0]]
    stacked = np.asarray(multihost_utils.process_allgather(np.asarray(local), tiled=False))
    return np.concatenate([stacked[p, : real[p]] for p in range(len(real))])


_COORDINATOR = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>[0-9]{1,5})$")


def check_coordinator(text: str) -> str:
    """``HOST:PORT`` with a port in [1, 65535] (IPv6 hosts in brackets); else ValueError naming the flag."""
    match = _COORDINATOR.match(text) if isinstance(text, str) else None
    if match is None or not 1 <= int(match["port"]) <= 65535:
        raise ValueError(f"--coordinator: expected HOST:PORT (e.g. host0:12345), got {text!r}")
    return text


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
    if coordinator is not None:
        check_coordinator(coordinator)
        num_processes = check_int("--num-processes", num_processes, 1)
        process_id = check_int("--process-id", process_id, 0, num_processes - 1)
    platforms = str(jax.config.jax_platforms or "")
    if not platforms or "cpu" in platforms.split(","):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator, num_processes=num_processes, process_id=process_id
    )


def sum_over_processes(value: Any) -> np.ndarray:
    """``value`` summed over every process, in its dtype; on one process, itself. Extended-precision
    values (``np.longdouble``) travel as two float64 parts (high and low) and are summed in extended
    precision, so the total hardly depends on how the sum was split among processes."""
    value = np.asarray(value)
    if jax.process_count() == 1:
        return value
    high = value.astype(np.float64)
    low = (value - high).astype(np.float64)
    parts = np.asarray(multihost_utils.process_allgather(np.stack([high, low]), tiled=False))
    return parts.astype(value.dtype).sum(axis=(0, 1)).astype(value.dtype)


def process_counts(n: int) -> list[int]:
    """Every process's n (rows it holds), in process order; on one process, [n]."""
    if jax.process_count() == 1:
        return [int(n)]
    return [
        int(v) for v in np.asarray(multihost_utils.process_allgather(np.asarray(n, np.int64), tiled=False))
    ]


def gather_rows(local: np.ndarray, counts: list[int]) -> np.ndarray:
    """Every process's rows of ``local`` ((counts[p], ...) on process p), concatenated in process order,
    on every process. Rows are padded to the largest count for the collective and cut after it."""
    if len(counts) == 1:
        return np.asarray(local)
    longest = max(counts)
    local = np.asarray(local)
    padded = np.zeros((longest, *local.shape[1:]), local.dtype)
    padded[: local.shape[0]] = local
    return gather_shares(padded, counts)


def wait_for_processes(name: str) -> None:
    """Every process waits here until all have arrived (e.g. until process 0 has saved); on one
    process, nothing."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
