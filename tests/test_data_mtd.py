"""The real Magnetic Tile Defect dataset (found by subspace_jax.data.mtd.find_root) and its split."""

from __future__ import annotations

import hashlib
import importlib.resources

import numpy as np
import pytest
from PIL import Image

from subspace_jax.data import MTD, read_mask
from subspace_jax.data.loading import load_samples
from subspace_jax.data.mtd import mtd_train_filenames

# MT_Uneven images whose published masks are entirely black (checked against the files: 0 non-zero
# pixels). Every other defective image has a non-empty mask.
EMPTY_MASKS = frozenset(
    {"exp3_num_45042.png", "exp4_num_124690.png", "exp4_num_352527.png", "exp4_num_45057.png"}
)


# sha256 of mtd_train_filenames.txt as distributed beside the MTD copy we were given (the DifferNet list);
# a downloaded MTD has no such list, so the packaged file is checked against this digest instead.
CANONICAL_SPLIT_SHA256 = "ddf6ddb1b4a123d9506a4d25e870ad32e2b845386c55201fca8307fdc7e62652"


def test_packaged_split_is_the_canonical_list():
    packaged = importlib.resources.files("subspace_jax.data").joinpath("mtd_train_filenames.txt")
    assert hashlib.sha256(packaged.read_bytes()).hexdigest() == CANONICAL_SPLIT_SHA256
    assert len(mtd_train_filenames()) == len(set(mtd_train_filenames())) == 761


def test_packaged_split_names_images_of_the_data(mtd_root):
    free = {p.name for p in (mtd_root / "MT_Free" / "Imgs").iterdir()}
    assert set(mtd_train_filenames()) <= free


def test_split_counts_and_types(mtd_root):
    dataset = MTD(mtd_root)
    train, test = dataset.samples("train"), dataset.samples("test")
    assert len(train) == 761 and all(s.label == 0 and s.defect_type == "good" for s in train)
    good = [s for s in test if s.label == 0]
    defective = [s for s in test if s.label == 1]
    assert len(good) == 191 and len(defective) == 392
    assert {s.image_path for s in train}.isdisjoint(s.image_path for s in good)
    assert len({s.image_path for s in train} | {s.image_path for s in good}) == 952
    counts = {t: sum(s.defect_type == t for s in defective) for t in {s.defect_type for s in defective}}
    assert counts == {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}
    assert all(s.mask_path is not None and s.mask_path.suffix == ".png" for s in defective)
    assert all(s.image_path.parent.parent.name == "MT_Free" for s in good)


def test_every_defective_mask_is_nonempty_except_the_known_blank_ones(mtd_root):
    defective = [s for s in MTD(mtd_root).samples("test") if s.label == 1]
    empty = {s.mask_path.name for s in defective if not read_mask(s.mask_path).any()}
    assert empty == EMPTY_MASKS
    assert all(s.defect_type == "uneven" for s in defective if s.mask_path.name in EMPTY_MASKS)


def test_loading_resizes_grayscale_to_square_rgb(mtd_root):
    test = MTD(mtd_root).samples("test")
    subset = test[::40]  # both defect-free and defective images, a quick load
    split = load_samples(subset, image_size=64, progress=False)
    assert split.images.shape == (len(subset), 64, 64, 3) and split.images.dtype == np.uint8
    assert split.masks.shape == (len(subset), 64, 64) and split.masks.dtype == bool
    np.testing.assert_array_equal(split.labels, [s.label for s in subset])
    assert split.labels.min() == 0 and split.labels.max() == 1
    for image, mask, sample in zip(split.images, split.masks, subset):
        # Independent reference: PIL directly on the grayscale JPEG, no aspect preservation.
        with Image.open(sample.image_path) as pil:
            assert pil.mode == "L"
            reference = np.asarray(pil.resize((64, 64), Image.Resampling.BILINEAR))
        for channel in range(3):
            np.testing.assert_array_equal(image[..., channel], reference)
        if sample.label == 0:
            assert not mask.any()
        elif sample.mask_path.name not in EMPTY_MASKS:
            assert mask.any()


def test_training_split_loads(mtd_root):
    split = MTD(mtd_root).load("train", image_size=32, progress=False)
    assert split.images.shape == (761, 32, 32, 3) and not split.masks.any()
    assert split.images.std() > 1.0  # real content, not a constant


def test_missing_class_folder_lists_what_exists(tmp_path):
    (tmp_path / "MT_Free" / "Imgs").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"MT_Blowhole/ not found.*contains: MT_Free/"):
        MTD(tmp_path)


def test_missing_training_images_are_reported(tmp_path):
    for class_name in ("MT_Free", "MT_Blowhole", "MT_Break", "MT_Crack", "MT_Fray", "MT_Uneven"):
        (tmp_path / class_name / "Imgs").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"761 MTD training image\(s\).*missing.*exp6_num_34208.jpg"):
        MTD(tmp_path).samples("train")
