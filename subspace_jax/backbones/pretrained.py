"""Finding pretrained weight files: explicit path, $SUBSPACE_JAX_WEIGHTS, the torch hub cache, a download.

Downloads go into the torch hub cache (so torch and this package share one copy), stream through a
temporary file that is renamed into place only after the sha256 prefix in torchvision's file name
(``resnet18-f37072fd.pth`` -> ``f37072fd``) has been checked; a failed or corrupted download leaves nothing.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.error
from pathlib import Path

from .._download import download_file

__all__ = [
    "DEFAULT_BASE_URL",
    "WeightsHashError",
    "WeightsNotFoundError",
    "download_weights",
    "hub_checkpoint_dir",
    "resolve_weights",
    "sha256_file",
]

DEFAULT_BASE_URL = "https://download.pytorch.org/models/"
WEIGHTS_DIR_ENV = "SUBSPACE_JAX_WEIGHTS"
BASE_URL_ENV = "SUBSPACE_JAX_WEIGHTS_URL"
_HASH_IN_NAME = re.compile(r"-([a-f0-9]{6,64})\.")
_CHUNK = 1 << 20


class WeightsNotFoundError(FileNotFoundError):
    """No weight file found locally and none could be downloaded."""


class WeightsHashError(ValueError):
    """A weight file's sha256 does not start with the prefix in its file name."""


def hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints``, else ``~/.cache/torch/hub/checkpoints`` (torch.hub's own rule,
    incl. XDG)."""
    torch_home = os.environ.get("TORCH_HOME")
    if torch_home is None:
        torch_home = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(torch_home).expanduser() / "hub" / "checkpoints"


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def expected_hash_prefix(file_name: str) -> str | None:
    """The sha256 prefix torchvision puts in its file names (``name-<hex>.pth``), if any."""
    match = _HASH_IN_NAME.search(file_name)
    return match.group(1) if match else None


def base_url() -> str:
    url = os.environ.get(BASE_URL_ENV, DEFAULT_BASE_URL)
    return url if url.endswith("/") else url + "/"


def download_weights(
    file_name: str, destination: Path, *, url: str | None = None, progress: bool = True
) -> Path:
    """Download ``url`` (default: base URL + ``file_name``) to ``destination`` atomically, checking the hash.

    Raises :class:`WeightsHashError` on a hash mismatch and :class:`~subspace_jax._download.DownloadError`
    (an ``OSError``) on network failure; in every failure case ``destination`` is left untouched.
    """
    url = url or base_url() + file_name
    prefix = expected_hash_prefix(file_name)

    def check_hash(_: Path, digest: str) -> None:
        if prefix is not None and not digest.startswith(prefix):
            raise WeightsHashError(
                f"downloaded {url} has sha256 {digest}, which does not start with {prefix} as its "
                "file name says: the download is corrupt or was tampered with; nothing was saved"
            )

    return download_file(
        url, destination, desc=f"downloading {file_name}", progress=progress, verify=check_hash
    )


def resolve_weights(
    file_name: str,
    *,
    path: str | os.PathLike | None = None,
    packaged: Path | None = None,
    downloadable: bool = True,
    progress: bool = True,
) -> Path:
    """Find ``file_name``: ``path`` if given, then ``$SUBSPACE_JAX_WEIGHTS/<file_name>``, then ``packaged``
    (a file shipped by a Python package), then the torch hub cache, then download into that cache.

    Raises :class:`WeightsNotFoundError` naming the file, the URL and where to put it.
    """
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"weights file {path} does not exist (passed as weights=/path=)")
        return path
    candidates: list[Path] = []
    weights_dir = os.environ.get(WEIGHTS_DIR_ENV)
    if weights_dir:
        candidates.append(Path(weights_dir).expanduser() / file_name)
    if packaged is not None:
        candidates.append(packaged)
    cache = hub_checkpoint_dir() / file_name
    candidates.append(cache)
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    url = base_url() + file_name
    where = f"put {file_name} in ${WEIGHTS_DIR_ENV} or in {cache.parent}, or pass its path as weights="
    if not downloadable:
        raise WeightsNotFoundError(
            f"weights file {file_name} not found (looked in: {', '.join(map(str, candidates))}); {where}"
        )
    try:
        return download_weights(file_name, cache, url=url, progress=progress)
    except WeightsHashError:
        raise
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        looked = ", ".join(map(str, candidates))
        raise WeightsNotFoundError(
            f"weights file {file_name} not found locally (looked in: {looked}) and the download from {url} "
            f"failed ({getattr(error, 'reason', error)}). Offline? Download {url} on a connected machine "
            f"and {where}."
        ) from error
