"""Magnetic Tile Defect dataset (Huang et al. 2020) with the canonical DifferNet split.

Layout: ``MT_<Class>/Imgs/<stem>.jpg`` image and ``<stem>.png`` mask. Train: the 761 MT_Free images
listed in ``mtd_train_filenames.txt`` (shipped in this package). Test: the other MT_Free images
(defect type "good") and every defective image (defect type = class name in lower case, e.g.
"blowhole"). Images are grayscale JPEGs of varying non-square sizes; loading resizes them to
image_size x image_size without preserving the aspect ratio, as the published protocol does.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from pathlib import Path

from subspace_jax.data.folder import GOOD, describe_folder, require_dir
from subspace_jax.data.loading import Dataset, Sample, check_split

FREE_CLASS = "MT_Free"
DEFECT_CLASSES = ("MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven")
MTD_CLASSES = (FREE_CLASS, *DEFECT_CLASSES)
_IMAGE_SUFFIX = ".jpg"
_MASK_SUFFIX = ".png"


@functools.cache
def mtd_train_filenames() -> tuple[str, ...]:
    """The 761 MT_Free image file names of the canonical training split (DifferNet and later papers)."""
    text = (
        importlib.resources.files("subspace_jax.data").joinpath("mtd_train_filenames.txt").read_text("utf-8")
    )
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    if len(set(names)) != len(names):
        raise ValueError("mtd_train_filenames.txt lists a file more than once")
    return names


class MTD(Dataset):
    """The Magnetic Tile Defect dataset rooted at the folder holding ``MT_Free/``, ``MT_Blowhole/``, ..."""

    name = "MTD"

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"MTD root {self.root} is not a folder; {describe_folder(self.root.parent)}"
            )
        for class_name in MTD_CLASSES:
            if not (self.root / class_name).is_dir():
                raise FileNotFoundError(
                    f"MTD class folder {class_name}/ not found in {self.root} "
                    f"(expected {', '.join(MTD_CLASSES)}); {describe_folder(self.root)}"
                )
            require_dir(self.root / class_name / "Imgs", f"MTD image folder of {class_name}")

    def __repr__(self) -> str:
        return f"MTD({str(self.root)!r})"

    def _images(self, class_name: str) -> list[Path]:
        folder = self.root / class_name / "Imgs"
        return sorted(
            (p for p in folder.iterdir() if p.suffix.lower() == _IMAGE_SUFFIX and not p.name.startswith(".")),
            key=lambda p: p.name,
        )

    def samples(self, split: str) -> list[Sample]:
        """Train: the listed MT_Free images in list order. Test: the other MT_Free images, then each
        defect class, by name."""
        check_split(split)
        free_dir = self.root / FREE_CLASS / "Imgs"
        train_names = mtd_train_filenames()
        if split == "train":
            missing = [name for name in train_names if not (free_dir / name).is_file()]
            if missing:
                raise FileNotFoundError(
                    f"{len(missing)} MTD training image(s) of the canonical split are missing from "
                    f"{free_dir}, "
                    f"e.g. {', '.join(missing[:5])}"
                )
            if not train_names:
                raise ValueError("MTD training set is empty: mtd_train_filenames.txt lists no files")
            return [Sample(free_dir / name, 0, GOOD, None) for name in train_names]
        in_train = set(train_names)
        samples = [
            Sample(path, 0, GOOD, None) for path in self._images(FREE_CLASS) if path.name not in in_train
        ]
        for class_name in DEFECT_CLASSES:
            defect_type = class_name.removeprefix("MT_").lower()
            for path in self._images(class_name):
                mask_path = path.with_suffix(_MASK_SUFFIX)
                if not mask_path.is_file():
                    raise FileNotFoundError(
                        f"defective image {path} has no ground-truth mask: expected {mask_path}"
                    )
                samples.append(Sample(path, 1, defect_type, mask_path))
        return samples
