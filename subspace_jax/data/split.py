"""The in-memory form of a dataset split, shared by every loader and the synthetic set."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
    """One split resized to S x S: N images, their ground-truth masks, labels and provenance.

    Attributes:
      images: uint8 (N, S, S, 3) RGB images.
      masks: bool (N, S, S) defect masks (all False for defect-free images).
      labels: int64 (N,) 0 for defect-free, 1 for defective.
      defect_types: N defect-type names ("good" for defect-free images).
      paths: N source image paths, None for samples generated in memory.
    """

    images: np.ndarray  # uint8 (N, S, S, 3)
    masks: np.ndarray  # bool (N, S, S)
    labels: np.ndarray  # int64 (N,) 0 good, 1 defective
    defect_types: tuple[str, ...]
    paths: tuple[Path | None, ...]  # None for in-memory samples


def stratified_halves(defect_types: Sequence[str], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into two disjoint halves A and B, stratified by defect type.

    For tuning on one half of a test set and reporting on the other: every defect type ("good"
    included) is shuffled with ``seed`` and its first ``ceil(n / 2)`` samples go to A, the rest to
    B, so each type is split as evenly as possible and the split depends only on the list and seed.

    Args:
      defect_types: (N,) defect-type name of every sample, in dataset order.
      seed: seed of the shuffle (``numpy.random.default_rng``).

    Returns:
      (indices_a, indices_b), sorted int64 arrays that together hold each index 0..N-1 once.
    """
    types = list(defect_types)
    if not types:
        raise ValueError("defect_types: expected at least one sample, got none")
    if not all(isinstance(t, str) for t in types):
        raise ValueError("defect_types: expected a sequence of defect-type names (str)")
    rng = np.random.default_rng(seed)
    half_a, half_b = [], []
    for name in sorted(set(types)):
        members = np.flatnonzero(np.asarray([t == name for t in types]))
        members = members[rng.permutation(members.size)]
        cut = (members.size + 1) // 2
        half_a.extend(members[:cut].tolist())
        half_b.extend(members[cut:].tolist())
    return np.sort(np.asarray(half_a, np.int64)), np.sort(np.asarray(half_b, np.int64))


def subset(split: Split, indices: Sequence[int] | np.ndarray) -> Split:
    """The samples ``indices`` of ``split`` (in that order) as a new ``Split``."""
    idx = np.asarray(indices, np.int64)
    if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= len(split.labels))):
        raise ValueError(f"indices: expected a 1-D array of indices in [0, {len(split.labels)})")
    return Split(
        split.images[idx],
        split.masks[idx],
        split.labels[idx],
        tuple(split.defect_types[i] for i in idx),
        tuple(split.paths[i] for i in idx),
    )
