"""Atomic file output shared by every writer in the package (results, checkpoints, weight downloads).

Whatever is written goes to a temporary sibling first and is renamed into place, so an interrupted
run never leaves a truncated file where a good one was.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import secrets
import shutil
import stat
import sys
import threading
import warnings
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


def _new_sibling_file(path: Path) -> tuple[int, str]:
    """A new, empty, owner-only temporary file beside ``path`` (a ``sibling``): (fd, its path)."""
    tmp = sibling(path, "tmp")
    return os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), str(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _new_sibling_file(path)
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
    fd, tmp = _new_sibling_file(path)
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


# --- hidden siblings: where a directory is written before it is swapped in --------------------------
#
# ``.<name>.<pid>-<8 hex>.tmp`` (being written) and ``.old`` (the previous copy during a swap) live beside
# their target, so renames stay on one file system. The pid says whether their writer still runs: the
# next writer removes (or recovers) what dead processes left. Long names are shortened with a hash so
# the sibling's name stays within the 255 bytes a file name may have.

_NAME_MAX = 255
ACTIVE: set[Path] = set()  # this process's in-flight siblings (never stale while we run)
ACTIVE_LOCK = threading.Lock()


def _sibling_prefix(path: Path) -> str:
    name = path.name
    room = _NAME_MAX - len(".." + "-" + ".tmp") - 8 - 10  # dots, token and a pid of up to 10 digits
    if len(os.fsencode(name)) > room:
        digest = hashlib.sha256(os.fsencode(name)).hexdigest()[:12]
        # A cut inside a multi-byte character decodes to surrogate escapes, which encode back unchanged.
        name = os.fsdecode(os.fsencode(name)[: room - 13]) + "~" + digest
    return f".{name}."


def sibling(path: Path, kind: str) -> Path:
    """A new hidden sibling of ``path`` of ``kind`` "tmp" or "old", named for this process."""
    return path.parent / f"{_sibling_prefix(path)}{os.getpid()}-{secrets.token_hex(4)}.{kind}"


def sibling_pid(path: Path, entry: Path) -> int | None:
    """The pid in ``entry``'s name when it is a sibling of ``path`` (``sibling``), else None."""
    prefix = _sibling_prefix(path)
    name = entry.name
    if not name.startswith(prefix) or not name.endswith((".tmp", ".old")):
        return None
    pid, _, token = name[len(prefix) : -4].partition("-")
    if not pid.isdigit() or len(token) != 8:
        return None
    return int(pid)


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False  # our own in-flight siblings are in ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def siblings(path: Path, *, stale_only: bool) -> list[Path]:
    """The siblings of ``path`` on disk (only those whose writer is gone when ``stale_only``), never
    this process's in-flight ones."""
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return []
    with ACTIVE_LOCK:
        active = set(ACTIVE)
    found = []
    for entry in entries:
        pid = sibling_pid(path, entry)
        if pid is None or entry in active or (stale_only and _pid_alive(pid)):
            continue
        found.append(entry)
    return found


def _writable(path: str | os.PathLike) -> None:
    try:
        os.chmod(path, (os.stat(path).st_mode & 0o7777) | stat.S_IRWXU)
    except OSError:
        pass


def remove_tree(path: Path, first: str | None = None) -> None:
    """Remove the directory ``path`` (a file or a symlink is unlinked, never followed). ``first`` names
    an entry deleted before the rest, so that a removal cut short never leaves something that looks
    complete (a checkpoint's marker). Read-only entries this user owns are made writable first; what
    still cannot be removed is left with a warning, never an error: removing a stale copy must not
    fail the write that replaced it."""

    def retry(function: Callable, failed: str, _: Any) -> None:
        _writable(os.path.dirname(failed))
        _writable(failed)
        function(failed)

    try:
        if path.is_dir() and not path.is_symlink():
            if first is not None:
                _writable(path)
                (path / first).unlink(missing_ok=True)
            if sys.version_info >= (3, 12):
                shutil.rmtree(path, onexc=retry)
            else:
                shutil.rmtree(path, onerror=retry)
        else:
            path.unlink(missing_ok=True)
    except OSError as error:
        warnings.warn(f"{path}: could not be removed ({error}); remove it yourself", stacklevel=2)


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
def atomic_directory(path: str | os.PathLike, *, still_replaceable: Callable[[Path], None] | None = None):
    """Yield a temporary directory beside ``path``; on success it replaces ``path``, on error it is removed.

    An existing ``path`` is only removed after the new directory is complete (and ``still_replaceable``
    accepted it), and is kept if the final rename fails (``replace_directory``). Temporaries that killed
    processes left beside ``path`` are removed first.
    """
    path = Path(os.path.abspath(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in siblings(path, stale_only=True):
        remove_tree(stale)
    tmp, backup = sibling(path, "tmp"), sibling(path, "old")
    with ACTIVE_LOCK:
        ACTIVE.update((tmp, backup))
    try:
        tmp.mkdir()
        yield tmp
        give_default_permissions(tmp, 0o777)
        replace_directory(tmp, path, backup, still_replaceable=still_replaceable)
    except BaseException:
        remove_tree(tmp)
        raise
    finally:
        with ACTIVE_LOCK:
            ACTIVE.difference_update((tmp, backup))


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
