"""Atomic file output shared by every writer in the package (results, checkpoints, weight downloads).

Whatever is written goes to a temporary sibling first and is renamed into place, so an interrupted
run never leaves a truncated file where a good one was.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def give_default_permissions(path: Path, mode: int) -> None:
    # mkstemp/mkdtemp create owner-only entries; results, figures and checkpoints should get the
    # permissions any ordinary file or folder written by this user would have.
    os.chmod(path, mode & ~_umask())


def user_cache_dir() -> Path:
    """This library's user cache: ``$XDG_CACHE_HOME/subspace_jax``, else ``~/.cache/subspace_jax``."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache).expanduser() / "subspace_jax"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        give_default_permissions(Path(tmp), 0o666)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed to ``path``, on error removed.

    For writers that need a filename rather than bytes (e.g. ``PIL.Image.save``, streamed downloads).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        give_default_permissions(tmp_path, 0o666)
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def remove_tree(path: Path, first: str | None = None) -> None:
    """Remove the directory ``path`` (a file or a symlink is unlinked, never followed). ``first`` names
    an entry deleted before the rest, so that a removal cut short never leaves something that looks
    complete (a checkpoint's marker)."""
    if path.is_dir() and not path.is_symlink():
        if first is not None:
            (path / first).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_directory(
    new: Path,
    path: Path,
    backup: Path,
    *,
    still_replaceable: Callable[[Path], None] | None = None,
    first: str | None = None,
) -> None:
    """Put the complete directory ``new`` at ``path`` by renames: an existing ``path`` goes to ``backup``
    (after ``still_replaceable(path)``, which raises if it may no longer be replaced), ``new`` into
    place, then the backup is removed (``remove_tree(backup, first)``). If the second rename fails, the
    backup is put back. A process killed between the renames leaves both complete copies on disk."""
    if os.path.lexists(path):
        if still_replaceable is not None:
            still_replaceable(path)
        os.replace(path, backup)
        try:
            os.replace(new, path)
        except BaseException:
            os.replace(backup, path)
            raise
        remove_tree(backup, first)
    else:
        os.replace(new, path)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``, on error it is removed.

    An existing ``path`` is only removed after the new directory is complete, and is kept if the
    final rename fails (``replace_directory``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        give_default_permissions(tmp, 0o777)
        backup = tmp.with_name(tmp.name[: -len(".tmp")] + ".old")
        replace_directory(tmp, path, backup)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def jsonable(value: Any) -> Any:
    """Tuples to lists, numpy scalars to Python, non-finite floats to None (JSON has no NaN)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value
