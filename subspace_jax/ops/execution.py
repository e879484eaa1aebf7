"""How the scorer is laid out on the hardware: vectorisation widths and the gathered/masked choice.

None of this changes results (maps agree across settings to float rounding), so it is not part of
``Config``: a model fitted once scores on a laptop CPU and on an accelerator with different settings.

- ``memory_budget_bytes``: the transient memory one vectorised step of the reconstruction may hold.
  Image mode gathers the candidate rows of ``W`` test images at once (``W`` = budget / (m·d·4));
  pixel mode pursues ``P`` pixels at once, up to all pixels of all images in the batch.
- ``gather_below``: image mode gathers the m candidate rows per test image when m ≤ gather_below·N,
  else it correlates the batch with the whole bank in one product and masks the non-candidates.

The defaults depend on the backend. On CPU the budget is small (``CPU_BUDGET_BYTES``): one image's
rows at a time ran fastest there (``benchmarks/cpu_throughput.md``), and the crossover m = N/2 was
measured there (``benchmarks/bench_gather.md``). On GPU/TPU the budget is a fraction of the free
device memory reported by ``device.memory_stats()``, and the masked whole-bank product is preferred
unless gathering reads fewer bytes than one pass over the bank for the whole batch (a matmul is what
an accelerator does best; ``benchmarks/device_check.py`` measures the crossover on a device).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import numpy as np

from subspace_jax._checks import check_int

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "Execution",
    "default_execution",
    "image_width",
    "is_concrete",
    "pixel_widths",
]

# Measured on the 2-core development VM (benchmarks/cpu_throughput.md): on MTD's level 2 (N = 761,
# λ = 50, d = 40960, an 8.2 MB block per image) one or two images at once ran alike and four (33 MB)
# took 4x as long per image, the gathered rows no longer fitting in cache; so the CPU budget admits
# about one such block.
CPU_BUDGET_BYTES = 8 << 20
# Images per compiled call where the caller names none. On the 2-core VM, fused end to end with MTD's
# default setting, 16 scored 12-13% faster per image than 8 in two runs, and 32 another 5-18% at twice
# the backbone's activations (benchmarks/cpu_throughput.md, benchmarks/bench_batch_size.py).
DEFAULT_BATCH_SIZE = 16
# Share of the free accelerator memory the reconstruction's transient blocks may take: the backbone's
# activations and the bank live in the rest.
ACCELERATOR_FRACTION = 0.25
_FALLBACK_ACCELERATOR_BYTES = 1 << 30  # when a device reports no memory statistics
CPU_GATHER_BELOW = 0.5  # bench_gather.md: gathered and masked cost the same near m = N/2 on CPU


@dataclasses.dataclass(frozen=True)
class Execution:
    """Static layout options of the scorer (hashable: a static argument under ``jit``).

    Attributes:
      memory_budget_bytes: transient bytes one vectorised reconstruction step may hold (>= 1).
      gather_below: image mode gathers candidate rows when m ≤ gather_below·N; None: on an
        accelerator, gather only when B·m < N (fewer rows read than one pass over the bank).
      bank_axis: mesh axis the bank rows are sharded over inside ``shard_map`` (set by
        ``subspace_jax.sharding``; None on one device).
    """

    memory_budget_bytes: int
    gather_below: float | None = CPU_GATHER_BELOW
    bank_axis: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "memory_budget_bytes", check_int("memory_budget_bytes", self.memory_budget_bytes, 1, 2**62)
        )
        if self.gather_below is not None and not 0.0 <= self.gather_below <= 1.0:
            raise ValueError(f"gather_below: expected None or a number in [0, 1], got {self.gather_below!r}")

    def gathers(self, batch: Any, m: int, n: int) -> bool:
        """Whether image mode gathers m candidate rows per image rather than masking all n rows. A
        symbolic batch (``jax.export``) cannot be compared: it gathers when m ≤ N/2, the CPU rule."""
        if self.gather_below is None and is_concrete(batch):
            return batch * m < n
        return m <= (CPU_GATHER_BELOW if self.gather_below is None else self.gather_below) * n


def default_execution(memory_budget_bytes: int | None = None, device: Any = None) -> Execution:
    """The backend's default ``Execution`` (``device``: default ``jax.devices()[0]``).

    CPU: ``CPU_BUDGET_BYTES`` and the measured m ≤ N/2 crossover. GPU/TPU: ``ACCELERATOR_FRACTION`` of
    the device's free memory (``memory_stats()``: bytes_limit − bytes_in_use) and ``gather_below=None``.
    """
    device = jax.devices()[0] if device is None else device
    if device.platform == "cpu":
        budget = CPU_BUDGET_BYTES if memory_budget_bytes is None else memory_budget_bytes
        return Execution(int(budget), CPU_GATHER_BELOW)
    if memory_budget_bytes is None:
        stats = device.memory_stats() or {}
        limit = stats.get("bytes_limit")
        free = None if limit is None else limit - stats.get("bytes_in_use", 0)
        memory_budget_bytes = _FALLBACK_ACCELERATOR_BYTES if not free else int(ACCELERATOR_FRACTION * free)
    return Execution(int(memory_budget_bytes), None)


def resolve(execution: Execution | None) -> Execution:
    """``execution``, or the default of the backend being traced for."""
    return default_execution() if execution is None else execution


def is_concrete(dim: Any) -> bool:
    """Whether an array dimension is a known int (not a symbolic size of ``jax.export``)."""
    return isinstance(dim, (int, np.integer))


def image_width(budget: int, batch: Any, bytes_per_image: int) -> int:
    """Test images whose candidate blocks fit the budget at once: in [1, batch] (1 for a symbolic batch,
    which is mapped one image at a time)."""
    if not is_concrete(batch):
        return 1
    return int(max(1, min(batch, budget // max(1, bytes_per_image))))


def pixel_widths(budget: int, batch: int, bytes_per_image: int, pixels: int, bytes_per_pixel: int):
    """(W, P): images whose gathered windows are held at once, and pixels pursued at once (<= W·pixels).

    Half the budget goes to the gathered candidate maps of W images, the rest to P pixel pursuits; when
    all B images fit, P may take every pixel of the batch.
    """
    width = image_width(budget // 2, batch, bytes_per_image)
    left = max(budget - width * bytes_per_image, budget // 2)
    return width, int(max(1, min(width * pixels, left // max(1, bytes_per_pixel))))
