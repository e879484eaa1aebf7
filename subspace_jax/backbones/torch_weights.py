"""Read ``torch.save`` files without torch: a restricted unpickler that rebuilds tensors as numpy arrays.

Both on-disk formats are handled:

* zip (torch >= 1.6): an archive ``<prefix>/data.pkl`` whose persistent ids name storages stored raw, in
  little-endian order, as ``<prefix>/data/<key>``;
* legacy (pre-1.6): a run of pickles (magic number, protocol version, system info, the object, the list
  of storage keys) followed by each storage as an int64 element count and its raw bytes.

The unpickler resolves only the globals in :data:`ALLOWED_GLOBALS` (``OrderedDict``, the tensor and
parameter rebuild functions, the storage type markers), each mapped to a local numpy implementation, so a
file can never make Python import or call anything else: a pickle naming ``os.system`` or
``builtins.eval`` fails with :class:`UnsafePickleError` before anything runs.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["ALLOWED_GLOBALS", "TorchFileError", "UnsafePickleError", "load_torch_file"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class TorchFileError(ValueError):
    """A weight file is not a readable ``torch.save`` file."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list (it would have imported or called arbitrary code)."""


@dataclass(frozen=True)
class _StorageType:
    """Stands in for ``torch.FloatStorage`` and friends: only the element dtype matters."""

    name: str
    dtype: np.dtype


_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_STORAGE_TYPES = {name: _StorageType(name, np.dtype(dt)) for name, dt in _STORAGE_DTYPES.items()}


class _BFloat16Storage:
    """bfloat16 has no numpy dtype; refusing it with a clear message beats silently misreading it."""


def _rebuild_tensor(storage: np.ndarray, storage_offset: int, size: tuple, stride: tuple) -> np.ndarray:
    """A tensor view of a flat storage, copied into a contiguous C-ordered array. Shape ``size``."""
    if not isinstance(storage, np.ndarray):
        raise TorchFileError(f"tensor storage is {type(storage).__name__}, expected a decoded storage")
    size = tuple(int(s) for s in size)
    stride = tuple(int(s) for s in stride)
    if len(size) != len(stride):
        raise TorchFileError(f"tensor size {size} and stride {stride} differ in length")
    numel = int(np.prod(size, dtype=np.int64))
    if numel == 0:
        return np.zeros(size, dtype=storage.dtype)
    last = storage_offset + sum((s - 1) * st for s, st in zip(size, stride))
    if storage_offset < 0 or any(st < 0 for st in stride) or last >= storage.size:
        raise TorchFileError(
            f"tensor of size {size}, stride {stride}, offset {storage_offset} exceeds its storage of "
            f"{storage.size} elements"
        )
    if not size:  # as_strided treats an empty shape as "keep the input's shape"
        return np.array(storage[storage_offset])
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=tuple(st * item for st in stride), writeable=False
    )
    return np.ascontiguousarray(view)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None
) -> np.ndarray:
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None) -> np.ndarray:
    return data


def _rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None) -> np.ndarray:
    return data


def _skip_rebuild(*args: Any) -> None:
    return None


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch", "BFloat16Storage"): _BFloat16Storage,
    **{("torch", name): storage_type for name, storage_type in _STORAGE_TYPES.items()},
}
"""Every global a weight file may name, mapped to the local (numpy) object that replaces it."""


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves globals only through :data:`ALLOWED_GLOBALS`; storages through ``load_storage``."""

    def __init__(
        self,
        file: io.BufferedIOBase,
        source: str,
        load_storage: Callable[[tuple], np.ndarray],
        build_tensors: bool = True,
    ):
        super().__init__(file)
        self._source = source
        self._load_storage = load_storage
        self._build_tensors = build_tensors

    def find_class(self, module: str, name: str) -> Any:
        try:
            resolved = ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: refusing to load global '{module}.{name}': only tensors, OrderedDict and "
                "storage types may appear in a weight file (this file may be malicious or not a state dict)"
            ) from None
        if not self._build_tensors and module == "torch._utils":
            return _skip_rebuild
        return resolved

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchFileError(f"{self._source}: unexpected persistent id {pid!r}")
        return self._load_storage(pid)


def _storage_dtype(storage_type: Any, source: str) -> np.dtype:
    if storage_type is _BFloat16Storage:
        raise TorchFileError(f"{source}: bfloat16 tensors are not supported; save the weights as float32")
    if not isinstance(storage_type, _StorageType):
        raise TorchFileError(f"{source}: storage type {storage_type!r} is not a torch storage type")
    return storage_type.dtype


def _load_zip(path: Path) -> Any:
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise TorchFileError(f"{path}: zip archive without exactly one data.pkl (found {pickles})")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder_name = prefix + "byteorder"
        if byteorder_name in names and archive.read(byteorder_name).decode().strip() != "little":
            raise TorchFileError(f"{path}: big-endian torch files are not supported")
        storages: dict[str, np.ndarray] = {}

        def load_storage(pid: tuple) -> np.ndarray:
            if len(pid) != 5:
                raise TorchFileError(f"{path}: malformed storage id {pid!r}")
            _, storage_type, key, _location, numel = pid
            dtype = _storage_dtype(storage_type, str(path))
            key = str(key)
            if key not in storages:
                try:
                    raw = archive.read(f"{prefix}data/{key}")
                except KeyError:
                    raise TorchFileError(f"{path}: storage '{key}' is missing from the archive") from None
                if len(raw) != int(numel) * dtype.itemsize:
                    raise TorchFileError(
                        f"{path}: storage '{key}' holds {len(raw)} bytes, expected {numel} "
                        f"elements of {dtype}"
                    )
                storages[key] = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
            storage = storages[key]
            if storage.dtype != dtype.newbyteorder("<"):
                storage = storage.view(dtype.newbyteorder("<"))
            return storage

        with archive.open(pickles[0]) as handle:
            return _RestrictedUnpickler(io.BytesIO(handle.read()), str(path), load_storage).load()


def _load_legacy(path: Path) -> Any:
    with open(path, "rb") as handle:
        raw = handle.read()
    stream = io.BytesIO(raw)
    source = str(path)

    def refuse_storage(pid: tuple) -> np.ndarray:
        raise TorchFileError(f"{source}: storage reference in a legacy header pickle")

    def header() -> Any:
        return _RestrictedUnpickler(stream, source, refuse_storage).load()

    try:
        magic = header()
    except (pickle.UnpicklingError, EOFError) as error:
        if isinstance(error, UnsafePickleError):
            raise
        raise TorchFileError(
            f"{source}: not a torch.save file (neither zip nor legacy pickle): {error}"
        ) from error
    if magic != _LEGACY_MAGIC:
        raise TorchFileError(f"{source}: not a torch.save file (legacy magic number missing)")
    protocol = header()
    if protocol != _LEGACY_PROTOCOL:
        raise TorchFileError(f"{source}: unsupported legacy protocol version {protocol!r}")
    sys_info = header()
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
        raise TorchFileError(f"{source}: big-endian or malformed legacy file")

    # Storages are declared by the object pickle but their bytes follow it, so the object is unpickled
    # twice: a first pass (tensor rebuilds skipped) learns the storages and finds where their bytes start,
    # a second pass builds the arrays from the filled storages.
    declared: dict[str, np.ndarray] = {}

    def load_storage(pid: tuple) -> np.ndarray:
        if len(pid) != 6:
            raise TorchFileError(f"{source}: malformed legacy storage id {pid!r}")
        _, storage_type, key, _location, numel, view_metadata = pid
        dtype = _storage_dtype(storage_type, source)
        key = str(key)
        if key not in declared:
            if (
                not 0 <= int(numel) * dtype.itemsize <= len(raw)
            ):  # a forged size must not allocate unbounded memory
                raise TorchFileError(
                    f"{source}: storage '{key}' claims {numel} elements, more than the file holds"
                )
            declared[key] = np.empty(int(numel), dtype=dtype)
        base = declared[key]
        if view_metadata is not None:
            _view_key, offset, view_size = view_metadata
            return base[int(offset) : int(offset) + int(view_size)]
        return base

    object_start = stream.tell()
    _RestrictedUnpickler(stream, source, load_storage, build_tensors=False).load()
    keys = header()
    if not isinstance(keys, list):
        raise TorchFileError(f"{source}: malformed legacy storage key list")
    for key in keys:
        key = str(key)
        if key not in declared:
            raise TorchFileError(f"{source}: storage '{key}' listed but never referenced")
        buffer = declared[key]
        count_bytes = stream.read(8)
        if len(count_bytes) != 8:
            raise TorchFileError(f"{source}: truncated before storage '{key}'")
        (count,) = struct.unpack("<q", count_bytes)
        if count != buffer.size:
            raise TorchFileError(f"{source}: storage '{key}' holds {count} elements, expected {buffer.size}")
        nbytes = count * buffer.dtype.itemsize
        data = stream.read(nbytes)
        if len(data) != nbytes:
            raise TorchFileError(f"{source}: truncated inside storage '{key}'")
        buffer[...] = np.frombuffer(data, dtype=buffer.dtype.newbyteorder("<"))
    stream.seek(object_start)
    return _RestrictedUnpickler(stream, source, load_storage).load()


def load_torch_file(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` file (zip or legacy format) with tensors as numpy arrays, without torch.

    Raises :class:`UnsafePickleError` for any global outside :data:`ALLOWED_GLOBALS`,
    :class:`TorchFileError` for anything that is not a well-formed torch file, ``FileNotFoundError`` if
    ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist")
    if zipfile.is_zipfile(path):
        return _load_zip(path)
    return _load_legacy(path)
