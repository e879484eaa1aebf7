"""Reading, resizing and cropping single images and masks (numpy in, numpy out).

Every reader returns RGB uint8 images and bool masks whatever the file holds (grayscale, RGBA,
palette, 16-bit), and fails with a ``ValueError`` naming the file when it cannot be decoded. Resizing
follows the published protocol: images bilinear (PIL, i.e. antialiased when shrinking, as
torchvision's ``Resize`` on PIL images), masks nearest neighbour, no aspect preservation, optional
center crop after the resize.
"""

from __future__ import annotations

import concurrent.futures
import os
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Modes whose samples are 16-bit (Pillow stores 16-bit PNG/TIFF as "I;16*", older versions as "I").
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")

_T = TypeVar("_T")
_R = TypeVar("_R")


def is_image_file(path: Path) -> bool:
    """True for a visible file with one of ``IMAGE_SUFFIXES`` (case-insensitive)."""
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_SUFFIXES


# A compressed file may decode to far more memory than it takes on disk (a 17 KB 1-bit PNG of 12000²
# pixels decodes to 1.7 GB of RGB). Images larger than this many pixels are refused before decoding;
# raise the limit with the environment variable SUBSPACE_JAX_MAX_IMAGE_PIXELS (or this attribute).
MAX_IMAGE_PIXELS = 64_000_000
_MAX_PIXELS_ENV = "SUBSPACE_JAX_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """The pixel limit of one decoded image: ``$SUBSPACE_JAX_MAX_IMAGE_PIXELS``, else ``MAX_IMAGE_PIXELS``."""
    text = os.environ.get(_MAX_PIXELS_ENV)
    if text is None:
        return MAX_IMAGE_PIXELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"${_MAX_PIXELS_ENV}: expected a positive int, got {text!r}")
    return value


def shown(path: str | bytes | os.PathLike) -> str:
    """A file name fit for messages and text files: undecodable bytes of the name as escapes."""
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


def _decode(
    path: str | bytes | os.PathLike, kind: str, convert: Callable[[Image.Image], np.ndarray]
) -> np.ndarray:
    path = Path(os.fsdecode(path))
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {shown(path)} does not exist")
    limit = max_image_pixels()
    try:
        with Image.open(path) as pil:
            width, height = pil.size
            if width * height > limit:
                raise ValueError(
                    f"{width} x {height} pixels exceed the limit of {limit} pixels per image (raise it with "
                    f"${_MAX_PIXELS_ENV})"
                )
            pil.load()  # decode now so that truncation is reported here, with the file name
            # The orientation a viewer shows (EXIF): masks and maps must match what the user sees.
            return convert(ImageOps.exif_transpose(pil))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"cannot read {kind} file {shown(path)}: {error}") from error


def _sixteen_bit_to_uint8(values: np.ndarray) -> np.ndarray:
    # Pillow's convert("L") clips 16-bit values at 255 instead of rescaling, which would saturate
    # almost every pixel, so rescale the full 0..65535 range here.
    scaled = np.clip(values.astype(np.float64), 0, 65535) * (255.0 / 65535.0)
    return np.round(scaled).astype(np.uint8)


def _pil_to_rgb(pil: Image.Image) -> np.ndarray:
    if pil.mode in _SIXTEEN_BIT_MODES:
        gray = _sixteen_bit_to_uint8(np.asarray(pil))
        return np.repeat(gray[:, :, None], 3, axis=2)
    if pil.mode == "F":
        raise ValueError("floating-point images are not supported; expected 8- or 16-bit integer samples")
    # Alpha is dropped rather than composited: anomaly images are opaque captures, and dropping it
    # matches what torchvision-based reference code does with convert("RGB").
    return np.asarray(pil.convert("RGB"), dtype=np.uint8).copy()


def _pil_to_mask(pil: Image.Image) -> np.ndarray:
    if pil.mode == "1":
        return np.asarray(pil, dtype=bool).copy()
    if pil.mode in _SIXTEEN_BIT_MODES:
        values, full_scale = np.asarray(pil).astype(np.int64), 65535
    elif pil.mode == "L":
        values, full_scale = np.asarray(pil), 255
    elif pil.mode == "F":
        raise ValueError("floating-point masks are not supported; expected 0/255 or 0/1 integer masks")
    else:  # palette, RGB(A), LA, ...: a pixel is defective when any colour channel is bright
        values, full_scale = np.asarray(pil.convert("RGB")).max(axis=2), 255
    if values.size and values.max() <= 1:  # a 0/1 label map
        return values > 0
    # Half the full scale: tolerant of antialiased edges (MTD) and JPEG noise (some BTAD masks).
    return values > full_scale // 2


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as RGB uint8 (H, W, 3); grayscale, palette, RGBA and 16-bit become RGB uint8.

    Raises:
      FileNotFoundError: ``path`` does not exist.
      ValueError: the file is unreadable, truncated or of an unsupported kind (the message names it).
    """
    return _decode(path, "image", _pil_to_rgb)


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a ground-truth mask file as bool (H, W).

    0/1 label maps are taken as they are; otherwise a pixel is defective when its value (brightest
    colour channel for colour masks) exceeds half the full scale (127 for 8-bit, 32767 for 16-bit).
    """
    return _decode(path, "mask", _pil_to_mask)


def check_sizes(image_size: int, crop: int | None) -> None:
    if not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if crop is not None and (not isinstance(crop, (int, np.integer)) or not 1 <= crop <= image_size):
        raise ValueError(f"crop must be None or an int in [1, image_size={image_size}], got {crop!r}")


def center_crop(array: np.ndarray, crop: int) -> np.ndarray:
    """Central crop x crop window of an (H, W, ...) array; offsets rounded as torchvision's CenterCrop."""
    height, width = array.shape[:2]
    if not 1 <= crop <= min(height, width):
        raise ValueError(f"crop={crop} does not fit an array of size {height}x{width}")
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return array[top : top + crop, left : left + crop]


def resize_image(image: np.ndarray, image_size: int, crop: int | None = None) -> np.ndarray:
    """uint8 (H, W, 3) -> uint8 (S, S, 3): bilinear resize to image_size, then optional center crop
    (S = crop or image_size)."""
    check_sizes(image_size, crop)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if image.shape[:2] != (image_size, image_size):
        image = np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.Resampling.BILINEAR))
    return center_crop(image, crop) if crop is not None else image


def resize_mask_to(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool (h, w) -> bool (height, width) by nearest neighbour (PIL)."""
    if mask.shape == (height, width):
        return mask.astype(bool, copy=False)
    pil = Image.fromarray(mask.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)
    return np.asarray(pil) > 127


def resize_mask(mask: np.ndarray, image_size: int, crop: int | None = None) -> np.ndarray:
    """bool (H, W) -> bool (S, S): nearest-neighbour resize to image_size, then optional center crop."""
    check_sizes(image_size, crop)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    mask = resize_mask_to(mask, image_size, image_size)
    return center_crop(mask, crop) if crop is not None else mask


def parallel_map(
    function: Callable[[_T], _R], items: Sequence[_T], *, desc: str, progress: bool = True
) -> list[_R]:
    """``[function(x) for x in items]`` on a thread pool (PIL decoding releases the GIL), in order,
    with a tqdm bar."""
    workers = min(8, (os.cpu_count() or 1) + 2)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results: Iterable[_R] = pool.map(function, items)
        return list(tqdm(results, total=len(items), desc=desc, unit="img", disable=not progress))


def load_images(
    paths: Sequence[str | os.PathLike], image_size: int = 256, crop: int | None = None, progress: bool = True
) -> np.ndarray:
    """Read and resize image files: returns uint8 (N, S, S, 3) with S = crop or image_size, in the
    order given."""
    check_sizes(image_size, crop)
    if len(paths) == 0:
        raise ValueError("paths is empty: expected at least one image file")
    arrays = parallel_map(
        lambda path: resize_image(read_image(path), image_size, crop),
        list(paths),
        desc="images",
        progress=progress,
    )
    return np.stack(arrays)
