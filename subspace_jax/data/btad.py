"""BTAD (beanTech): ``<root>/{01,02,03}/train/ok``, ``test/ok``, ``test/ko``, ``ground_truth/ko``."""

from __future__ import annotations

import os

from subspace_jax.data.folder import CategoryFolderDataset

BTAD_CATEGORIES = ("01", "02", "03")


class BTAD(CategoryFolderDataset):
    """One BTAD product. Masks are matched to images by file stem whatever the extension (BTAD mixes
    .bmp, .png and .jpg). Defect-free test images are reported with defect type "good", defective ones "ko".
    An int category (1) is read as its two-digit folder name ("01").
    """

    name = "BTAD"

    def __init__(self, root: str | os.PathLike, category: str | int) -> None:
        if isinstance(category, int):
            category = f"{category:02d}"
        super().__init__(root, category, good_dir="ok", mask_suffixes=("", "_mask"))
