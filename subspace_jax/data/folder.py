"""Datasets laid out as folders: ``train/<good>``, ``test/<type>``, ``ground_truth/<type>`` (MVTec AD style).

``FolderDataset`` is the generic form; ``MVTecAD`` and ``BTAD`` are this layout with their own
folder names and mask-naming rules.
"""

from __future__ import annotations

import os
from pathlib import Path

from subspace_jax.data.images import is_image_file
from subspace_jax.data.loading import Dataset, Sample, check_split

GOOD = "good"


def describe_folder(path: Path) -> str:
    """What exists at the nearest existing folder at or above ``path``, for error messages."""
    folder = path
    while not folder.is_dir() and folder != folder.parent:
        folder = folder.parent
    entries = sorted(entry.name + ("/" if entry.is_dir() else "") for entry in folder.iterdir())
    entries = [entry for entry in entries if not entry.startswith(".")]
    if len(entries) > 30:
        entries = entries[:30] + [f"... ({len(entries) - 30} more)"]
    return f"{folder} contains: {', '.join(entries) if entries else '(nothing)'}"


def require_dir(path: Path, what: str) -> Path:
    """``path`` if it is a folder, else a FileNotFoundError saying what was expected and what exists
    beside it."""
    if path.is_dir():
        return path
    raise FileNotFoundError(f"{what} not found: {path} is not a folder; {describe_folder(path.parent)}")


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    return sorted((path for path in folder.iterdir() if is_image_file(path)), key=lambda path: path.name)


def subfolders(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
    )


class FolderDataset(Dataset):
    """A folder with ``train/<good_dir>/``, ``test/<type>/`` and optionally ``ground_truth/<type>/``.

    The test folder named ``good_dir`` holds defect-free images (defect type "good", no mask); every
    other test folder holds defective images of that type, whose masks are found in
    ``ground_truth/<type>/`` by the image's stem plus one of ``mask_suffixes``, any image extension
    (``<stem>_mask.png``, ``<stem>.bmp``, ...). With ``require_masks=False`` a defective image without a
    mask (or a dataset without ``ground_truth/``) is allowed and gets an all-False mask: only
    image-level metrics are then meaningful.

    Args:
      root: the dataset folder.
      good_dir: name of the defect-free folders under train/ and test/.
      mask_suffixes: stem suffixes tried in order when matching masks to images.
      require_masks: whether a defective image without a mask is an error.
    """

    name = "folder"

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        good_dir: str = GOOD,
        mask_suffixes: tuple[str, ...] = ("_mask", ""),
        require_masks: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"{self.name} dataset root {self.root} is not a folder; {describe_folder(self.root.parent)}"
            )
        self.good_dir = good_dir
        self.mask_suffixes = tuple(mask_suffixes)
        self.allow_missing_masks = not require_masks

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def samples(self, split: str) -> list[Sample]:
        """Train: the images of ``train/<good_dir>`` (label 0). Test: every ``test/<type>`` folder,
        sorted by type then name."""
        if check_split(split) == "train":
            return self._train_samples()
        return self._test_samples()

    def _train_samples(self) -> list[Sample]:
        folder = require_dir(self.root / "train" / self.good_dir, f"{self.name} training folder")
        files = image_files(folder)
        if not files:
            raise ValueError(f"{self.name} training set is empty: no image files in {folder}")
        return [Sample(path, 0, GOOD, None) for path in files]

    def _test_samples(self) -> list[Sample]:
        test_root = require_dir(self.root / "test", f"{self.name} test folder")
        samples: list[Sample] = []
        for folder in subfolders(test_root):
            files = image_files(folder)
            if folder.name == self.good_dir:
                samples.extend(Sample(path, 0, GOOD, None) for path in files)
                continue
            masks = self._mask_index(folder.name)
            for path in files:
                mask_path = self._find_mask(path, masks)
                if mask_path is None and not self.allow_missing_masks:
                    raise FileNotFoundError(
                        f"defective image {path} has no ground-truth mask: expected "
                        f"{self.root / 'ground_truth' / folder.name}/{path.stem}"
                        f"{{{','.join(self.mask_suffixes)}}}.<png|bmp|...>"
                    )
                samples.append(Sample(path, 1, folder.name, mask_path))
        if not samples:
            raise ValueError(f"{self.name} test set is empty: no images in the folders of {test_root}")
        return samples

    def _mask_index(self, defect_type: str) -> dict[str, list[Path]]:
        folder = self.root / "ground_truth" / defect_type
        index: dict[str, list[Path]] = {}
        if folder.is_dir():
            for path in image_files(folder):
                index.setdefault(path.stem, []).append(path)
        return index

    def _find_mask(self, image_path: Path, masks: dict[str, list[Path]]) -> Path | None:
        for suffix in self.mask_suffixes:
            candidates = masks.get(image_path.stem + suffix, [])
            if len(candidates) > 1:
                raise ValueError(
                    f"ambiguous masks for {image_path}: {', '.join(str(c) for c in candidates)}; "
                    "keep one of them"
                )
            if candidates:
                return candidates[0]
        return None


class CategoryFolderDataset(FolderDataset):
    """A ``FolderDataset`` that is one category folder under a dataset root (MVTec AD, BTAD)."""

    def __init__(self, root: str | os.PathLike, category: str, **layout) -> None:
        dataset_root = Path(root)
        if not dataset_root.is_dir():
            raise FileNotFoundError(
                f"{self.name} root {dataset_root} is not a folder; {describe_folder(dataset_root.parent)}"
            )
        category_dir = dataset_root / str(category)
        if not category_dir.is_dir():
            found = [p.name for p in subfolders(dataset_root)]
            raise FileNotFoundError(
                f"{self.name} category {category!r} not found in {dataset_root}; "
                f"categories there: {', '.join(found) if found else '(none)'}"
            )
        self.category = str(category)
        self.dataset_root = dataset_root
        super().__init__(category_dir, **layout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.dataset_root)!r}, {self.category!r})"
