"""The one dataset registry: the benchmarks and ``subspace-jax evaluate`` open datasets by name.

``DATASETS[name]`` is a ``DatasetSpec``: title, the environment variable naming its folder, its
categories, ``open(root, category)`` -> a ``Dataset``, and for MTD where else to look (``find_root``).
``folder`` is any folder laid out as ``train/good``, ``test/<type>``, ``ground_truth/<type>``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from subspace_jax.data.btad import BTAD, BTAD_CATEGORIES
from subspace_jax.data.folder import FolderDataset
from subspace_jax.data.mtd import MTD, find_root
from subspace_jax.data.mvtec import MVTEC_CATEGORIES, MVTecAD

__all__ = ["DATASETS", "DatasetSpec", "get"]


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What distinguishes one benchmark dataset from another.

    ``open(root, category)`` returns a dataset with ``.samples(split)`` and ``.load(split, ...)``;
    ``find_root`` (MTD) looks where the tests do when neither a root nor ``env_var`` is given, and
    raises FileNotFoundError saying where it looked.
    """

    name: str
    title: str
    env_var: str
    categories: tuple[str, ...]
    open: Callable[[Path, str], Any]
    find_root: Callable[[], Path] | None = None


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec("mvtec", "MVTec AD", "SUBSPACE_JAX_MVTEC", MVTEC_CATEGORIES, MVTecAD),
        DatasetSpec("btad", "BTAD", "SUBSPACE_JAX_BTAD", BTAD_CATEGORIES, BTAD),
        DatasetSpec("mtd", "MTD", "SUBSPACE_JAX_MTD", ("mtd",), lambda root, _: MTD(root), find_root),
        DatasetSpec(
            "folder",
            "an image folder",
            "SUBSPACE_JAX_FOLDER",
            ("folder",),
            lambda root, _: FolderDataset(root, require_masks=False),
        ),
    )
}


def get(name: str) -> DatasetSpec:
    """The dataset called ``name``; ValueError listing the known names otherwise."""
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {', '.join(DATASETS)}, got {name!r}")
    return DATASETS[name]
