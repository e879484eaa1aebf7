"""Samples (what a dataset lists) and turning a list of samples into a resized in-memory ``Split``."""

from __future__ import annotations

import abc
import dataclasses
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from subspace_jax.data.images import (
    check_sizes,
    parallel_map,
    read_image,
    read_mask,
    resize_image,
    resize_mask,
    resize_mask_to,
)
from subspace_jax.data.split import Split

SPLITS = ("train", "test")


@dataclasses.dataclass(frozen=True)
class Sample:
    """One listed image: its file, label (0 defect-free, 1 defective), defect type and mask file
    (None: no mask)."""

    image_path: Path
    label: int
    defect_type: str
    mask_path: Path | None

    def __post_init__(self) -> None:
        if self.label not in (0, 1):
            raise ValueError(
                f"label of {self.image_path} must be 0 (good) or 1 (defective), got {self.label!r}"
            )


@dataclasses.dataclass(frozen=True)
class _Loaded:
    image: np.ndarray  # uint8 (S, S, 3)
    mask: np.ndarray  # bool (S, S)
    # (mask (H, W), image (H, W)) when the mask file's size differed from its image's, else None.
    size_mismatch: tuple[tuple[int, int], tuple[int, int]] | None


def read_sample(
    sample: Sample,
) -> tuple[np.ndarray, np.ndarray, tuple[tuple[int, int], tuple[int, int]] | None]:
    """Read a sample at its own size: image uint8 (H, W, 3), mask bool (H, W) aligned with it, size mismatch.

    A missing mask is all False. A mask file whose size differs from the image is resized to the image
    (nearest); the third value is then ((mask H, W), (image H, W)), else None.
    """
    image = read_image(sample.image_path)
    height, width = image.shape[:2]
    size_mismatch = None
    if sample.mask_path is None:
        mask = np.zeros((height, width), bool)
    else:
        mask = read_mask(sample.mask_path)
        if mask.shape != (height, width):
            size_mismatch = (mask.shape, (height, width))
            mask = resize_mask_to(mask, height, width)
    return image, mask, size_mismatch


def _load_sample(sample: Sample, image_size: int, crop: int | None) -> _Loaded:
    image, mask, size_mismatch = read_sample(sample)
    return _Loaded(resize_image(image, image_size, crop), resize_mask(mask, image_size, crop), size_mismatch)


def load_samples(
    samples: Sequence[Sample],
    image_size: int = 256,
    crop: int | None = None,
    progress: bool = True,
    *,
    desc: str = "loading",
    allow_missing_masks: bool = False,
) -> Split:
    """Read, resize (images bilinear, masks nearest) and optionally center-crop samples into a ``Split``.

    Returns images uint8 (N, S, S, 3), masks bool (N, S, S), labels int64 (N,), with S = crop or
    image_size, in the order of ``samples``. Defect-free samples without a mask get all-False masks;
    a defective sample without one is an error unless ``allow_missing_masks``. A mask whose size
    differs from its image is resized to the image (nearest) and one warning summarises all such masks.
    """
    check_sizes(image_size, crop)
    if len(samples) == 0:
        raise ValueError("samples is empty: expected at least one sample to load")
    if not allow_missing_masks:
        for sample in samples:
            if sample.label == 1 and sample.mask_path is None:
                raise ValueError(f"defective image {sample.image_path} has no ground-truth mask")
    loaded = parallel_map(
        lambda s: _load_sample(s, image_size, crop), list(samples), desc=desc, progress=progress
    )
    mismatched = [
        (s, item.size_mismatch) for s, item in zip(samples, loaded) if item.size_mismatch is not None
    ]
    if mismatched:
        warn_mask_size_mismatch(len(mismatched), *mismatched[0])
    return Split(
        images=np.stack([item.image for item in loaded]),
        masks=np.stack([item.mask for item in loaded]),
        labels=np.array([s.label for s in samples], dtype=np.int64),
        defect_types=tuple(s.defect_type for s in samples),
        paths=tuple(Path(s.image_path) for s in samples),
    )


def warn_mask_size_mismatch(
    count: int, first: Sample, sizes: tuple[tuple[int, int], tuple[int, int]]
) -> None:
    """The one warning for all masks of a split whose size differed from their image's."""
    (mask_h, mask_w), (image_h, image_w) = sizes
    warnings.warn(
        f"{count} mask(s) differ in size from their images and were resized to them with nearest neighbour; "
        f"first: mask {first.mask_path} is {mask_w}x{mask_h} but image {first.image_path} "
        f"is {image_w}x{image_h}",
        stacklevel=3,
    )


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


class Dataset(abc.ABC):
    """A dataset on disk: ``samples(split)`` lists it, ``load(split, ...)`` reads it as a resized
    ``Split``."""

    #: Shown in progress bars and error messages.
    name: str = "dataset"
    #: Whether defective images without a mask are allowed (their masks are then all False).
    allow_missing_masks: bool = False

    @abc.abstractmethod
    def samples(self, split: str) -> list[Sample]:
        """The samples of ``split`` ("train" or "test") in a deterministic order."""

    def load(
        self, split: str, image_size: int = 256, crop: int | None = None, progress: bool = True
    ) -> Split:
        """Load ``split`` resized to image_size (then center-cropped to crop if given) as a ``Split``."""
        return load_samples(
            self.samples(split),
            image_size,
            crop,
            progress,
            desc=f"{self.name} {split}",
            allow_missing_masks=self.allow_missing_masks,
        )
