"""Magnetic Tile Defect dataset: the loader (:mod:`.loader`); finding and downloading it (:mod:`.fetch`).

``python -m subspace_jax.data.mtd download [--dest DIR]`` fetches the public archive into the user cache,
where :func:`find_root` (used by the tests, the notebooks and the experiments) looks for it.
"""

from __future__ import annotations

from subspace_jax.data.mtd.fetch import (
    DOWNLOAD_COMMAND,
    MTDArchiveError,
    MTDNotFoundError,
    candidate_roots,
    check_layout,
    default_root,
    download,
    find_root,
)
from subspace_jax.data.mtd.loader import DEFECT_CLASSES, FREE_CLASS, MTD, MTD_CLASSES, mtd_train_filenames

__all__ = [
    "DEFECT_CLASSES",
    "DOWNLOAD_COMMAND",
    "FREE_CLASS",
    "MTD",
    "MTDArchiveError",
    "MTDNotFoundError",
    "MTD_CLASSES",
    "candidate_roots",
    "check_layout",
    "default_root",
    "download",
    "find_root",
    "mtd_train_filenames",
]
