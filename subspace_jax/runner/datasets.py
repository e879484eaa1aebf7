"""The paper's three benchmarks as :class:`DatasetSpec` values (the scripts in ``experiments/`` run them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from subspace_jax.configs.loading import CONFIG_DIR
from subspace_jax.runner.core import DatasetSpec


def _mvtec(root: Path, category: str) -> Any:
    from subspace_jax.data import MVTecAD

    return MVTecAD(root, category)


def _btad(root: Path, category: str) -> Any:
    from subspace_jax.data import BTAD

    return BTAD(root, category)


def _mtd(root: Path, category: str) -> Any:
    from subspace_jax.data import MTD

    return MTD(root)


def _mtd_root() -> Path:
    from subspace_jax.data.mtd import find_root

    return find_root()


def _categories(name: str) -> tuple[str, ...]:
    from subspace_jax import data

    return tuple(getattr(data, name))


MVTEC = DatasetSpec(
    name="mvtec",
    title="MVTec AD",
    env_var="SUBSPACE_JAX_MVTEC",
    categories=_categories("MVTEC_CATEGORIES"),
    open=_mvtec,
)
BTAD = DatasetSpec(
    name="btad",
    title="BTAD",
    env_var="SUBSPACE_JAX_BTAD",
    categories=_categories("BTAD_CATEGORIES"),
    open=_btad,
)
# MTD is one category. Its subspace default is experiments/configs/mtd_default.py (issue 14: the paper's
# MTD setting, experiments/configs/mtd_paper.py, with a PCA-projected bfloat16 bank, k = 20 and a top-1%
# image score).
MTD = DatasetSpec(
    name="mtd",
    title="MTD",
    env_var="SUBSPACE_JAX_MTD",
    categories=("mtd",),
    open=_mtd,
    configs={"subspace": CONFIG_DIR / "mtd_default.py"},
    find_root=_mtd_root,
)
