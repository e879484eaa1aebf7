"""MVTec AD: ``<root>/<category>/train/good``, ``test/<type>``, ``ground_truth/<type>/<stem>_mask.png``."""

from __future__ import annotations

import os

from subspace_jax.data.folder import GOOD, CategoryFolderDataset

MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)  # fmt: skip


class MVTecAD(CategoryFolderDataset):
    """One MVTec AD category (test/good has no masks; defective masks are ``<stem>_mask.png``).

    Any category folder present under ``root`` is accepted (e.g. a synthetic tree in the same
    layout); ``MVTEC_CATEGORIES`` lists the fifteen official ones.
    """

    name = "MVTec AD"

    def __init__(self, root: str | os.PathLike, category: str) -> None:
        super().__init__(root, category, good_dir=GOOD, mask_suffixes=("_mask",))
