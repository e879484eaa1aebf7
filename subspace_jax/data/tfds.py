"""TFDS builders for MVTec AD, BTAD and MTD (the ``tfds`` extra), written as array_record files.

No TensorFlow is needed, to build or to read: examples are encoded with PIL (``tfds.features.Image``
accepts PIL images and only calls TensorFlow to encode numpy arrays), the builders write
``array_record`` files, and ``tfds.data_source`` / ``builder.as_data_source()`` read them back as
numpy through PIL. (``builder.as_dataset()`` returns a ``tf.data.Dataset`` and does need TensorFlow.)

The data must be downloaded by hand (the licences forbid redistribution) into a folder given as
``manual_dir``::

    import tensorflow_datasets as tfds
    from subspace_jax.data.tfds import MvtecAd, split_from_source

    builder = MvtecAd(config="bottle", data_dir="/data/tfds")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir="/data/mvtec_anomaly_detection"))
    test = split_from_source(builder.as_data_source()["test"], image_size=256)

or, once prepared and with this module imported, ``tfds.data_source("mvtec_ad/bottle", data_dir=...)``.
Each record holds the image at its original size converted to RGB (PNG), the mask aligned with it
(uint8 (H, W, 1), 0 or 255), the label (0 good, 1 defective), the defect type and the file name
relative to ``manual_dir``. Both splits ("train", "test") are written.
"""

from __future__ import annotations

import abc
import inspect
import os
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from etils import epath
from PIL import Image

try:
    import tensorflow_datasets as tfds
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "subspace_jax.data.tfds needs tensorflow-datasets and array-record: pip install 'subspace-jax[tfds]'"
    ) from error

from subspace_jax.data.btad import BTAD, BTAD_CATEGORIES
from subspace_jax.data.images import parallel_map, resize_image, resize_mask
from subspace_jax.data.loading import SPLITS, Dataset, Sample, read_sample, warn_mask_size_mismatch
from subspace_jax.data.mtd import MTD
from subspace_jax.data.mvtec import MVTEC_CATEGORIES, MVTecAD
from subspace_jax.data.split import Split

FILE_FORMAT = "array_record"
LABEL_NAMES = ("good", "defective")


def _forget_earlier_load() -> None:
    """Drop the TFDS registrations an earlier load of this very module made.

    TFDS registers each builder class when it is defined and refuses a name it already holds, so a reload
    (``importlib.reload``, a notebook's autoreload) would fail with "Dataset with name mvtec_ad already
    registered". Only entries whose class was defined by this module are dropped: a builder of the same
    name from anywhere else still collides, as TFDS intends. TFDS offers no public way to unregister,
    hence its private registries; on a TFDS without them this does nothing.
    """
    registered = tfds.core.registered
    registry = getattr(registered, "_DATASET_REGISTRY", {})
    for name in [name for name, cls in registry.items() if cls.__module__ == __name__]:
        del registry[name]
    getattr(registered, "_MODULE_TO_DATASETS", {}).pop(__name__, None)


_forget_earlier_load()


def _features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(shape=(None, None, 3), dtype=np.uint8, encoding_format="png"),
            "mask": tfds.features.Image(shape=(None, None, 1), dtype=np.uint8, encoding_format="png"),
            "label": tfds.features.ClassLabel(names=list(LABEL_NAMES)),
            "defect_type": tfds.features.Text(),
            "filename": tfds.features.Text(),
        }
    )


class _AnomalyBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder: lists a manual_dir with one of the package's datasets and writes both splits."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: original-size RGB images, aligned 0/255 masks."}
    DESCRIPTION = ""
    HOMEPAGE = ""
    CITATION = ""

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path | None:
        # TFDS 4.9.10 resolves the code path of a builder defined inside a package through
        # ``importlib_resources``, a backport it only requires on Python < 3.9, so on 3.11 without it
        # download_and_prepare fails with ModuleNotFoundError. This is the same path, found directly.
        return epath.Path(inspect.getfile(cls))

    def __init__(self, *, file_format: str | None = FILE_FORMAT, **kwargs) -> None:
        # array_record is the one format that needs no TensorFlow to write and gives random access.
        super().__init__(file_format=file_format, **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=self.DESCRIPTION,
            features=_features(),
            homepage=self.HOMEPAGE,
            citation=self.CITATION,
        )

    @abc.abstractmethod
    def _dataset(self, manual_dir: Path) -> Dataset:
        """The package dataset reading ``manual_dir`` for this builder (and config)."""

    def _split_generators(self, dl_manager):
        manual_dir = Path(os.fspath(dl_manager.manual_dir))
        dataset = self._dataset(manual_dir)
        # List both splits before writing anything, so a layout error fails before any output.
        samples = {split: dataset.samples(split) for split in SPLITS}
        return {split: self._generate_examples(samples[split], manual_dir) for split in SPLITS}

    def _generate_examples(self, samples: Sequence[Sample], manual_dir: Path) -> Iterator[tuple[str, dict]]:
        mismatched = []
        for sample in samples:
            image, mask, size_mismatch = read_sample(sample)
            if size_mismatch is not None:
                mismatched.append((sample, size_mismatch))
            filename = sample.image_path.relative_to(manual_dir).as_posix()
            yield (
                filename,
                {
                    "image": Image.fromarray(image),
                    "mask": Image.fromarray(mask.astype(np.uint8) * 255),
                    "label": sample.label,
                    "defect_type": sample.defect_type,
                    "filename": filename,
                },
            )
        if mismatched:
            warn_mask_size_mismatch(len(mismatched), *mismatched[0])


class MvtecAd(_AnomalyBuilder):
    """MVTec AD, one config per category; manual_dir is the folder holding bottle/, cable/, ..."""

    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=category, description=f"MVTec AD category {category}")
        for category in MVTEC_CATEGORIES
    ]
    DESCRIPTION = "MVTec AD: 15 categories of industrial images with pixel-precise defect masks."
    HOMEPAGE = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
    CITATION = "Bergmann et al., MVTec AD, CVPR 2019; IJCV 2021."
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download mvtec_anomaly_detection.tar.xz from
    https://www.mvtec.com/company/research/datasets/mvtec-ad (registration; CC BY-NC-SA 4.0), extract
    it, and pass the extracted folder (the one holding bottle/, cable/, ...) as manual_dir. Each
    category must have train/good/, test/<type>/ and ground_truth/<type>/<stem>_mask.png.
    """

    def _dataset(self, manual_dir: Path) -> Dataset:
        return MVTecAD(manual_dir, self.builder_config.name)


class Btad(_AnomalyBuilder):
    """BTAD (beanTech), one config per product 01, 02, 03; manual_dir holds 01/, 02/, 03/."""

    BUILDER_CONFIGS = [
        tfds.core.BuilderConfig(name=category, description=f"BTAD product {category}")
        for category in BTAD_CATEGORIES
    ]
    DESCRIPTION = "BTAD: three industrial products with defect masks (beanTech Anomaly Detection)."
    HOMEPAGE = "https://github.com/pankajmishra000/VT-ADL"
    CITATION = (
        "Mishra et al., VT-ADL: A Vision Transformer Network for Image Anomaly Detection and "
        "Localization, ISIE 2021."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download BTech_Dataset_transformed.zip (linked from https://github.com/pankajmishra000/VT-ADL),
    extract it, and pass the folder holding 01/, 02/, 03/ as manual_dir. Each product must have
    train/ok/, test/ok/, test/ko/ and ground_truth/ko/ (masks matched to images by file stem).
    """

    def _dataset(self, manual_dir: Path) -> Dataset:
        return BTAD(manual_dir, self.builder_config.name)


class Mtd(_AnomalyBuilder):
    """Magnetic Tile Defect, canonical split (761 train; 191 defect-free + 392 defective test);
    manual_dir holds MT_*/."""

    DESCRIPTION = "Magnetic Tile Defect dataset (Huang et al. 2020), DifferNet's canonical train/test split."
    HOMEPAGE = "https://github.com/abin24/Magnetic-tile-defect-datasets."
    CITATION = (
        "Huang, Qiu, Yuan, Surface defect saliency of magnetic tile, The Visual Computer 36, 85-96 (2020)."
    )
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Clone https://github.com/abin24/Magnetic-tile-defect-datasets. (the repository name ends with
    a full stop), or run `python -m subspace_jax.data.mtd download`, and pass the folder holding
    MT_Free/, MT_Blowhole/, MT_Break/, MT_Crack/, MT_Fray/ and MT_Uneven/ (each with Imgs/ holding
    <stem>.jpg images and <stem>.png masks) as manual_dir.
    """

    def _dataset(self, manual_dir: Path) -> Dataset:
        return MTD(manual_dir)


def split_from_source(
    source: Sequence[dict], image_size: int = 256, crop: int | None = None, progress: bool = True
) -> Split:
    """Resize the records of a TFDS data source (``builder.as_data_source()[split]``) into a ``Split``.

    Records are ordered by file name (TFDS shuffles them when writing), so the result matches the
    package loader on the same folder. ``paths`` are the file names relative to manual_dir.
    """
    if len(source) == 0:
        raise ValueError("source is empty: expected a prepared split with at least one record")

    def resized(index: int) -> tuple[str, np.ndarray, np.ndarray, int, str]:
        record = source[index]
        filename = _text(record["filename"])
        image = resize_image(np.asarray(record["image"]), image_size, crop)
        mask = resize_mask(np.asarray(record["mask"])[..., 0] > 127, image_size, crop)
        return filename, image, mask, int(record["label"]), _text(record["defect_type"])

    rows = sorted(
        parallel_map(resized, range(len(source)), desc="records", progress=progress), key=lambda r: r[0]
    )
    return Split(
        images=np.stack([row[1] for row in rows]),
        masks=np.stack([row[2] for row in rows]),
        labels=np.array([row[3] for row in rows], dtype=np.int64),
        defect_types=tuple(row[4] for row in rows),
        paths=tuple(Path(row[0]) for row in rows),
    )


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
