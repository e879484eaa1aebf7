"""Datasets: MVTec AD, BTAD, MTD and generic folders, read into resized in-memory ``Split``s.

``subspace_jax.data.synthetic`` (procedural set) and ``subspace_jax.data.tfds`` (TFDS builders, needs
the ``tfds`` extra) are submodules imported on their own.
"""

from __future__ import annotations

from subspace_jax.data.btad import BTAD, BTAD_CATEGORIES
from subspace_jax.data.folder import FolderDataset
from subspace_jax.data.images import load_images, read_image, read_mask, resize_image, resize_mask
from subspace_jax.data.loading import Dataset, Sample, load_samples
from subspace_jax.data.mtd import MTD, MTD_CLASSES
from subspace_jax.data.mvtec import MVTEC_CATEGORIES, MVTecAD
from subspace_jax.data.split import Split

__all__ = [
    "BTAD",
    "BTAD_CATEGORIES",
    "Dataset",
    "FolderDataset",
    "MTD",
    "MTD_CLASSES",
    "MVTEC_CATEGORIES",
    "MVTecAD",
    "Sample",
    "Split",
    "load_images",
    "load_samples",
    "read_image",
    "read_mask",
    "resize_image",
    "resize_mask",
]
