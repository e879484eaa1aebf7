"""The in-memory form of a dataset split, shared by every loader and the synthetic set."""

from __future__ import annotations

import dataclasses
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
