"""Finding the MTD on this machine, and downloading its public archive into the user cache.

Where the data is looked for, in order (:func:`candidate_roots`):

1. ``$SUBSPACE_JAX_MTD``, when set (then it is the only place: a wrong setting is reported, not skipped);
2. ``../shared/data/mtd`` beside a source checkout of this package;
3. the user cache, where ``python -m subspace_jax.data.mtd download`` puts it (:func:`default_root`):
   ``$XDG_CACHE_HOME/subspace_jax/mtd``, else ``~/.cache/subspace_jax/mtd``.

The archive is GitHub's zip of the default branch of ``abin24/Magnetic-tile-defect-datasets.`` (the full
stop is part of the repository's name). Its ``MT_*/Imgs/`` folders are extracted into a temporary folder
beside the destination, checked (952 defect-free images, 392 defective ones, a mask for every image, every
image of the canonical training list) and only then renamed into place, so an interrupted or bad download
leaves nothing at the destination.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import zipfile
from pathlib import Path, PurePosixPath
from typing import Sequence

from subspace_jax._download import DownloadError, stream_to_file
from subspace_jax._io import atomic_directory, user_cache_dir
from subspace_jax.data.mtd.loader import (
    _IMAGE_SUFFIX,
    _MASK_SUFFIX,
    DEFECT_CLASSES,
    FREE_CLASS,
    MTD_CLASSES,
    mtd_train_filenames,
)

ENV_VAR = "SUBSPACE_JAX_MTD"
URL_ENV_VAR = "SUBSPACE_JAX_MTD_URL"
DEFAULT_URL = "https://github.com/abin24/Magnetic-tile-defect-datasets./archive/refs/heads/master.zip"
DOWNLOAD_COMMAND = "python -m subspace_jax.data.mtd download"
N_FREE = 952
N_DEFECTIVE = 392
# The published archive unpacks to about 100 MB; anything declaring far more is not that archive.
_MAX_UNPACKED_BYTES = 2 << 30


class MTDNotFoundError(FileNotFoundError):
    """No MTD folder at any of the places looked in."""


class MTDArchiveError(ValueError):
    """A downloaded archive is not a complete MTD (unreadable zip, missing images or masks)."""


def default_root() -> Path:
    """The user-cache folder the download command fills: ``$XDG_CACHE_HOME/subspace_jax/mtd`` or
    ``~/.cache/subspace_jax/mtd``."""
    return user_cache_dir() / "mtd"


def beside_checkout() -> Path | None:
    """``../shared/data/mtd`` next to the source checkout this package runs from (None when installed)."""
    repository = Path(__file__).resolve().parents[3]
    if not (repository / "pyproject.toml").is_file():
        return None
    return repository.parent / "shared" / "data" / "mtd"


def candidate_roots() -> list[Path]:
    """The folders :func:`find_root` tries, in order: ``$SUBSPACE_JAX_MTD`` alone when set, else the
    checkout's neighbour and the user cache."""
    explicit = os.environ.get(ENV_VAR)
    if explicit:
        return [Path(explicit).expanduser()]
    beside = beside_checkout()
    return [*([beside] if beside is not None else []), default_root()]


def is_mtd_root(path: Path) -> bool:
    """Whether ``path`` holds the six ``MT_*/Imgs`` folders (a cheap test; :func:`check_layout` counts)."""
    return all((path / name / "Imgs").is_dir() for name in MTD_CLASSES)


def find_root() -> Path:
    """The first of :func:`candidate_roots` that holds the MTD folders.

    Raises :class:`MTDNotFoundError` naming every place looked in and the download command.
    """
    candidates = candidate_roots()
    for candidate in candidates:
        if is_mtd_root(candidate):
            return candidate
    if os.environ.get(ENV_VAR):
        where = f"{ENV_VAR}={candidates[0]} does not hold MT_Free/Imgs, MT_Blowhole/Imgs, ..."
    else:
        where = f"looked in {', '.join(map(str, candidates))}"
    raise MTDNotFoundError(
        f"MTD not found ({where}); get it with `{DOWNLOAD_COMMAND}` (into {default_root()}) "
        f"or set {ENV_VAR} to the folder holding MT_Free/, MT_Blowhole/, ..."
    )


def _images(folder: Path) -> list[Path]:
    # The loader's convention: lower-case .jpg, hidden files ignored.
    return [p for p in folder.iterdir() if p.suffix.lower() == _IMAGE_SUFFIX and not p.name.startswith(".")]


def check_layout(
    root: str | os.PathLike, *, n_free: int = N_FREE, n_defective: int = N_DEFECTIVE, label: str | None = None
) -> None:
    """Check that ``root`` is the complete MTD: ``n_free`` MT_Free images, ``n_defective`` images in the five
    defect classes, a ``.png`` mask beside every image, and every image of the canonical training list.

    Raises :class:`MTDArchiveError` saying what is missing; messages name ``label`` (default: ``root``).
    """
    root = Path(root)
    where = label or str(root)
    missing_folders = [name for name in MTD_CLASSES if not (root / name / "Imgs").is_dir()]
    if missing_folders:
        raise MTDArchiveError(f"{where} has no {', '.join(f'{name}/Imgs' for name in missing_folders)}")
    images = {name: _images(root / name / "Imgs") for name in MTD_CLASSES}
    found_free = len(images[FREE_CLASS])
    found_defective = sum(len(images[name]) for name in DEFECT_CLASSES)
    if (found_free, found_defective) != (n_free, n_defective):
        raise MTDArchiveError(
            f"{where} holds {found_free} MT_Free and {found_defective} defective images; "
            f"MTD has {n_free} and {n_defective}"
        )
    no_mask = [p for paths in images.values() for p in paths if not p.with_suffix(_MASK_SUFFIX).is_file()]
    if no_mask:
        raise MTDArchiveError(
            f"{len(no_mask)} image(s) in {where} have no mask (<stem>{_MASK_SUFFIX}), "
            f"e.g. {no_mask[0].relative_to(root)}"
        )
    free_names = {p.name for p in images[FREE_CLASS]}
    not_there = [name for name in mtd_train_filenames() if name not in free_names]
    if not_there:
        raise MTDArchiveError(
            f"{len(not_there)} image(s) of the canonical training split are not in {FREE_CLASS}/Imgs "
            f"of {where}, e.g. {not_there[0]}"
        )


def _member_target(name: str) -> PurePosixPath | None:
    """``MT_<Class>/Imgs/<file>`` for a member at that place (optionally under one top folder), else None."""
    parts = PurePosixPath(name).parts
    if len(parts) == 4 and not parts[0].startswith("__MACOSX"):
        parts = parts[1:]  # GitHub's "<repository>-<branch>/" top folder
    if len(parts) != 3 or parts[0] not in MTD_CLASSES or parts[1] != "Imgs":
        return None
    if parts[2] in ("", ".", "..") or "\\" in parts[2]:
        return None
    return PurePosixPath(*parts)


def _extract(archive: Path, destination: Path, url: str) -> None:
    """Copy the ``MT_*/Imgs/*`` members of the zip ``archive`` into ``destination``."""
    try:
        with zipfile.ZipFile(archive) as zf:
            members = [(info, _member_target(info.filename)) for info in zf.infolist() if not info.is_dir()]
            members = [(info, target) for info, target in members if target is not None]
            if not members:
                raise MTDArchiveError(f"the archive from {url} has no MT_*/Imgs/ files: not the MTD archive")
            unpacked = sum(info.file_size for info, _ in members)
            if unpacked > _MAX_UNPACKED_BYTES:
                raise MTDArchiveError(
                    f"the archive from {url} declares {unpacked} unpacked bytes, far more than MTD's"
                )
            for info, target in members:
                path = destination.joinpath(*target.parts)
                path.parent.mkdir(parents=True, exist_ok=True)
                # ZipExtFile checks each member's CRC-32 at its end, so a corrupt member raises here.
                with zf.open(info) as source, open(path, "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise MTDArchiveError(f"the archive from {url} is corrupt or incomplete ({error})") from error


# GitHub's archive of the dataset's repository is about 100 MB; an endless or oversized body stops here.
MAX_ARCHIVE_BYTES = 1 << 30
_MAX_ARCHIVE_ENV = "SUBSPACE_JAX_MTD_MAX_BYTES"


def max_archive_bytes() -> int:
    """The download cap: ``$SUBSPACE_JAX_MTD_MAX_BYTES``, else ``MAX_ARCHIVE_BYTES`` (1 GiB)."""
    text = os.environ.get(_MAX_ARCHIVE_ENV)
    if text is None:
        return MAX_ARCHIVE_BYTES
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"${_MAX_ARCHIVE_ENV}: expected a positive int of bytes, got {text!r}")
    return int(text)


def download(
    dest: str | os.PathLike | None = None,
    *,
    url: str | None = None,
    progress: bool = True,
    n_free: int = N_FREE,
    n_defective: int = N_DEFECTIVE,
) -> Path:
    """Download and check the MTD archive into ``dest`` (default :func:`default_root`); returns ``dest``.

    ``url`` defaults to ``$SUBSPACE_JAX_MTD_URL``, else GitHub's archive of the dataset's repository. A
    ``dest`` that already holds the complete MTD is returned as it is; a non-empty ``dest`` that does not
    is refused (:class:`FileExistsError`), never overwritten. Failures raise
    :class:`~subspace_jax._download.DownloadError` (network) or :class:`MTDArchiveError` (contents), and
    leave ``dest`` as it was.
    """
    dest = Path(dest).expanduser() if dest is not None else default_root()
    url = url or os.environ.get(URL_ENV_VAR) or DEFAULT_URL
    if dest.exists():
        if not dest.is_dir():
            raise FileExistsError(f"--dest {dest} is a file, not a folder")
        try:
            check_layout(dest, n_free=n_free, n_defective=n_defective)
            return dest
        except MTDArchiveError:
            if any(dest.iterdir()):
                raise FileExistsError(
                    f"--dest {dest} exists and is not a complete MTD; remove it or choose another folder"
                ) from None
    with atomic_directory(dest) as tmp:
        archive = tmp / ".archive.zip"
        stream_to_file(url, archive, desc="downloading MTD", progress=progress, max_bytes=max_archive_bytes())
        _extract(archive, tmp, url)
        archive.unlink()
        check_layout(tmp, n_free=n_free, n_defective=n_defective, label=f"the archive from {url}")
    return dest


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``download [--dest DIR] [--url URL] [--no-progress]``; one-line errors, exit code 1."""
    parser = argparse.ArgumentParser(
        prog="python -m subspace_jax.data.mtd", description="Get the Magnetic Tile Defect dataset."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    get = commands.add_parser(
        "download", help="download the public archive into the user cache and check it (952 + 392 images)"
    )
    get.add_argument("--dest", type=Path, help=f"target folder (default: {default_root()})")
    get.add_argument("--url", help=f"archive URL (default: ${URL_ENV_VAR}, else {DEFAULT_URL})")
    get.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        root = download(args.dest, url=args.url, progress=not args.no_progress)
    except DownloadError as error:
        print(
            f"error: could not download MTD from {error.url} ({error.reason}). Offline? Fetch that archive "
            f"on a connected machine, unzip it and set {ENV_VAR} to the folder holding MT_Free/.",
            file=sys.stderr,
        )
        return 1
    except (MTDArchiveError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"MTD ready at {root}: {N_FREE} defect-free and {N_DEFECTIVE} defective images, with masks.")
    if args.dest is not None and root != default_root():
        print(f"Set {ENV_VAR}={root} so that the tests, notebooks and experiments find it.")
    return 0
