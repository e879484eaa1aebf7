"""The in-memory result of loading one split of a dataset: images, masks, labels and provenance."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
    """One loaded split (train or test) of a dataset, resized to S x S.

    images: uint8 (N, S, S, 3); masks: bool (N, S, S), True on defective pixels (all False for good
    images); labels: int64 (N,), 0 good, 1 defective; defect_types: the defect folder name of each
    image ("good" for defect-free ones); paths: the source file of each image, None for in-memory
    samples.
    """

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    defect_types: tuple[str, ...]
    paths: tuple[Path | None, ...]
