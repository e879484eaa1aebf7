"""Read ``torch.save`` files without torch: a restricted unpickler that rebuilds tensors as numpy arrays.

Both on-disk formats are handled:

* zip (torch >= 1.6): an archive ``<prefix>/data.pkl`` whose persistent ids name storages stored raw, in
  little-endian order, as ``<prefix>/data/<key>``;
* legacy (pre-1.6): a run of pickles (magic number, protocol version, system info, the object, the list
  of storage keys) followed by each storage as an int64 element count and its raw bytes.

The unpickler resolves only the globals in :data:`ALLOWED_GLOBALS` (``OrderedDict``, the tensor and
parameter rebuild functions, the storage type markers), each mapped to a local numpy implementation, so a
file can never make Python import or call anything else: a pickle naming ``os.system`` or
``builtins.eval`` fails with :class:`UnsafePickleError` before anything runs. A pickle receives fresh
stand-ins for the allowed names, never the shared objects, and a BUILD opcode on one is refused, so one
hostile file cannot change what a later load sees.

Memory stays proportional to the file: every tensor view is checked against its storage before anything
is allocated (no overlapping or stride-0 views, none past the storage's end), zip members are refused
when their declared size disagrees with the storage they hold or exceeds what their compression can
produce, and are never read past it. Any malformed input raises :class:`TorchFileError` naming the file.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

__all__ = ["ALLOWED_GLOBALS", "TorchFileError", "UnsafePickleError", "load_torch_file"]

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class TorchFileError(ValueError):
    """A weight file is not a readable ``torch.save`` file."""


class UnsafePickleError(TorchFileError, pickle.UnpicklingError):
    """A pickle asked for a global outside the allow-list (it would have imported or called arbitrary
    code), or tried to change an allow-listed object. A ``TorchFileError`` (so a ``ValueError``) and a
    ``pickle.UnpicklingError``."""


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


# torch stores archive members uncompressed; a deflated member comes from repacking, and weights do
# not compress much. A member declaring more than 100 times its compressed size (plus 1 MiB) is refused
# before it is read: that is the shape of a zip bomb (deflate alone reaches about 1032:1 on zeros).
_MAX_DEFLATE_RATIO = 100
_DEFLATE_SLACK = 1 << 20
# Non-contiguous views are copied; all copies of one load together may not exceed the storage bytes
# by more than this factor (plus a small allowance), so many views of one storage cannot multiply it.
_COPY_BUDGET_FACTOR = 2
_COPY_BUDGET_SLACK = 1 << 20


class _LoadContext:
    """Per-load state: the file name for messages and the budget of bytes copied out of storages."""

    def __init__(self, source: str):
        self.source = source
        self.storage_bytes = 0
        self.copied_bytes = 0

    def add_storage(self, nbytes: int) -> None:
        self.storage_bytes += nbytes

    def charge_copy(self, nbytes: int) -> None:
        self.copied_bytes += nbytes
        budget = _COPY_BUDGET_FACTOR * self.storage_bytes + _COPY_BUDGET_SLACK
        if self.copied_bytes > budget:
            raise TorchFileError(
                f"{self.source}: tensor views would copy {self.copied_bytes} bytes out of "
                f"{self.storage_bytes} bytes of storage; refusing this memory amplification"
            )


def _check_view(storage: np.ndarray, storage_offset: Any, size: Any, stride: Any, source: str):
    """Validate a tensor view against its flat storage before anything is allocated.

    Returns (offset, size, stride) as Python ints. Refuses negative values, views that run past the
    storage, and views whose elements overlap (stride 0 on a dimension longer than 1, or strides too
    small for the dimensions nested inside them): a state dict has no use for them, and they would
    let a tiny storage expand into a huge array.
    """
    try:
        offset = int(storage_offset)
        size = tuple(int(s) for s in size)
        stride = tuple(int(s) for s in stride)
    except (TypeError, ValueError) as error:
        raise TorchFileError(f"{source}: malformed tensor view ({error})") from None
    if len(size) != len(stride):
        raise TorchFileError(f"{source}: tensor size {size} and stride {stride} differ in length")
    if offset < 0 or any(s < 0 for s in size) or any(st < 0 for st in stride):
        raise TorchFileError(
            f"{source}: negative size, stride or offset in tensor view {size}/{stride}/{offset}"
        )
    if math.prod(size) == 0:
        return offset, size, stride
    last = offset + sum((s - 1) * st for s, st in zip(size, stride))
    if last >= storage.size:
        raise TorchFileError(
            f"{source}: tensor of size {size}, stride {stride}, offset {storage_offset} exceeds its storage "
            f"of {storage.size} elements"
        )
    # Non-overlapping iff, visiting dimensions by increasing stride, each stride exceeds the span of
    # the dimensions before it (dimensions of length 1 take no room and may have any stride).
    span = 0
    for s, st in sorted(((s, st) for s, st in zip(size, stride) if s > 1), key=lambda d: d[1]):
        if st <= span:
            raise TorchFileError(
                f"{source}: tensor of size {size} and stride {stride} has overlapping elements "
                "(e.g. an expanded, stride-0 view); refusing it"
            )
        span += (s - 1) * st
    return offset, size, stride


def _rebuild_tensor(
    storage: np.ndarray, storage_offset: int, size: tuple, stride: tuple, context: _LoadContext
) -> np.ndarray:
    """A tensor view of a flat storage, as a C-ordered array (copied only when not contiguous)."""
    if not isinstance(storage, np.ndarray):
        raise TorchFileError(
            f"{context.source}: tensor storage is {type(storage).__name__}, expected a decoded storage"
        )
    offset, size, stride = _check_view(storage, storage_offset, size, stride, context.source)
    numel = math.prod(size)
    if numel == 0:
        return np.zeros(size, dtype=storage.dtype)
    if not size:  # as_strided treats an empty shape as "keep the input's shape"
        return np.array(storage[offset])
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=size, strides=tuple(st * item for st in stride), writeable=False
    )
    if not view.flags.c_contiguous:
        context.charge_copy(numel * item)
    return np.ascontiguousarray(view)


def _rebuild_tensor_v2(
    storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None, *, context
) -> np.ndarray:
    return _rebuild_tensor(storage, storage_offset, size, stride, context)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, *, context) -> np.ndarray:
    return data


def _rebuild_parameter_with_state(
    data, requires_grad=False, backward_hooks=None, state=None, *, context
) -> np.ndarray:
    return data


def _skip_rebuild(*args: Any, context: _LoadContext) -> None:
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
"""Every global a weight file may name, mapped to the local (numpy) object that replaces it.

The unpickler never hands these objects themselves to a pickle: it gives a fresh :class:`_Global`
stand-in on every lookup (``OrderedDict``, an immutable built-in type, excepted), so a pickle's
BUILD opcode cannot change module state or anything a later load sees.
"""


class _Global:
    """A per-lookup stand-in for an allow-listed function or storage type.

    Calling it calls the local implementation with the load's context; ``BUILD`` on it (pickle's
    ``__setstate__``) is refused, and it has no attributes a pickle could set.
    """

    __slots__ = ("_key", "_context")

    def __init__(self, key: tuple[str, str], context: _LoadContext):
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_context", context)

    @property
    def target(self) -> Any:
        return ALLOWED_GLOBALS[self._key]

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        target = self.target
        if not callable(target) or isinstance(target, type):
            raise TorchFileError(f"{self._context.source}: '{'.'.join(self._key)}' is not callable")
        return target(*args, **kwargs, context=self._context)

    def __setattr__(self, name: str, value: Any) -> None:
        self.__setstate__(None)

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(
            f"{self._context.source}: refusing to change the allow-listed global '{'.'.join(self._key)}' "
            "(a BUILD opcode on it): this file may be malicious"
        )

    def __reduce__(self) -> Any:
        raise TypeError("allow-list stand-ins are not picklable")


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves globals only through :data:`ALLOWED_GLOBALS`; storages through ``load_storage``."""

    def __init__(
        self,
        file: io.BufferedIOBase,
        context: _LoadContext,
        load_storage: Callable[[tuple], np.ndarray],
        build_tensors: bool = True,
    ):
        super().__init__(file)
        self._context = context
        self._load_storage = load_storage
        self._build_tensors = build_tensors

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self._context.source}: refusing to load global '{module}.{name}': only tensors, "
                "OrderedDict and storage types may appear in a weight file (this file may be malicious "
                "or not a state dict)"
            )
        if key == ("collections", "OrderedDict"):
            return collections.OrderedDict  # a built-in type: BUILD cannot change it
        if not self._build_tensors and module == "torch._utils":
            return _Global(("torch._utils", "_skip"), self._context)
        return _Global(key, self._context)

    def persistent_load(self, pid: Any) -> np.ndarray:
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise TorchFileError(f"{self._context.source}: unexpected persistent id {pid!r}")
        return self._load_storage(pid)


ALLOWED_GLOBALS[("torch._utils", "_skip")] = _skip_rebuild  # only reachable through _build_tensors=False


def _storage_dtype(storage_type: Any, source: str) -> np.dtype:
    target = storage_type.target if isinstance(storage_type, _Global) else None
    if target is _BFloat16Storage:
        raise TorchFileError(f"{source}: bfloat16 tensors are not supported; save the weights as float32")
    if not isinstance(target, _StorageType):
        raise TorchFileError(f"{source}: storage type {storage_type!r} is not a torch storage type")
    return np.dtype(_STORAGE_DTYPES[target.name])


def _read_member(archive: zipfile.ZipFile, name: str, expected: int | None, source: str) -> bytes:
    """The bytes of one archive member, refused before reading when its declared size is absurd
    (not ``expected``, or more than its compressed size can expand to) and never read past it."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise TorchFileError(f"{source}: '{name}' is missing from the archive") from None
    declared = info.file_size
    if expected is not None and declared != expected:
        raise TorchFileError(
            f"{source}: archive member '{name}' declares {declared} bytes, expected {expected}"
        )
    if info.compress_type == zipfile.ZIP_STORED:
        plausible = declared == info.compress_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        plausible = declared <= _MAX_DEFLATE_RATIO * info.compress_size + _DEFLATE_SLACK
    else:
        raise TorchFileError(
            f"{source}: archive member '{name}' uses compression method {info.compress_type}; torch "
            "files store members uncompressed (or deflated)"
        )
    if not plausible:
        raise TorchFileError(
            f"{source}: archive member '{name}' declares {declared} bytes from {info.compress_size} "
            "compressed bytes, more than its compression can produce (a zip bomb?); refusing it"
        )
    chunks, total = [], 0
    with archive.open(info) as handle:
        while chunk := handle.read(min(1 << 20, declared - total + 1)):
            total += len(chunk)
            if total > declared:
                raise TorchFileError(f"{source}: archive member '{name}' holds more than its declared size")
            chunks.append(chunk)
    if total != declared:
        raise TorchFileError(f"{source}: archive member '{name}' holds {total} bytes, declared {declared}")
    return b"".join(chunks)


def _load_zip(path: Path) -> Any:
    source = str(path)
    context = _LoadContext(source)
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pickles) != 1:
            raise TorchFileError(f"{path}: zip archive without exactly one data.pkl (found {pickles})")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder_name = prefix + "byteorder"
        if byteorder_name in names:
            byteorder = _read_member(archive, byteorder_name, None, source)
            if byteorder[:16].decode("ascii", "replace").strip() != "little":
                raise TorchFileError(f"{path}: big-endian torch files are not supported")
        storages: dict[str, np.ndarray] = {}

        def load_storage(pid: tuple) -> np.ndarray:
            if len(pid) != 5:
                raise TorchFileError(f"{path}: malformed storage id {pid!r}")
            _, storage_type, key, _location, numel = pid
            dtype = _storage_dtype(storage_type, source)
            key = str(key)
            if key not in storages:
                if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
                    raise TorchFileError(f"{path}: storage '{key}' has a malformed size {numel!r}")
                raw = _read_member(archive, f"{prefix}data/{key}", numel * dtype.itemsize, source)
                storages[key] = np.frombuffer(raw, dtype=dtype.newbyteorder("<"))
                context.add_storage(len(raw))
            storage = storages[key]
            if storage.dtype != dtype.newbyteorder("<"):
                if (storage.size * storage.dtype.itemsize) % dtype.itemsize:
                    raise TorchFileError(f"{path}: storage '{key}' is read as two incompatible types")
                storage = storage.view(dtype.newbyteorder("<"))
            return storage

        payload = _read_member(archive, pickles[0], None, source)
        return _RestrictedUnpickler(io.BytesIO(payload), context, load_storage).load()


def _load_legacy(path: Path) -> Any:
    with open(path, "rb") as handle:
        raw = handle.read()
    stream = io.BytesIO(raw)
    source = str(path)
    context = _LoadContext(source)

    def refuse_storage(pid: tuple) -> np.ndarray:
        raise TorchFileError(f"{source}: storage reference in a legacy header pickle")

    def header() -> Any:
        return _RestrictedUnpickler(stream, context, refuse_storage).load()

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
            if not isinstance(numel, int) or isinstance(numel, bool) or numel < 0:
                raise TorchFileError(f"{source}: storage '{key}' has a malformed size {numel!r}")
            # The storages' bytes all follow in this file: together they cannot claim more than it
            # holds, so forged sizes cannot allocate more memory than the file's own size.
            if context.storage_bytes + numel * dtype.itemsize > len(raw):
                raise TorchFileError(
                    f"{source}: storage '{key}' claims {numel} elements, more than the file holds"
                )
            declared[key] = np.empty(numel, dtype=dtype)
            context.add_storage(numel * dtype.itemsize)
        base = declared[key]
        if view_metadata is not None:
            try:
                _view_key, offset, view_size = view_metadata
                offset, view_size = int(offset), int(view_size)
            except (TypeError, ValueError):
                raise TorchFileError(f"{source}: malformed storage view {view_metadata!r}") from None
            if offset < 0 or view_size < 0 or offset + view_size > base.size:
                raise TorchFileError(
                    f"{source}: storage view [{offset}, {offset + view_size}) exceeds storage '{key}' of "
                    f"{base.size} elements"
                )
            return base[offset : offset + view_size]
        return base

    object_start = stream.tell()
    _RestrictedUnpickler(stream, context, load_storage, build_tensors=False).load()
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
    return _RestrictedUnpickler(stream, context, load_storage).load()


# What malformed input makes the parsers raise; each becomes a TorchFileError naming the file.
_MALFORMED = (
    pickle.UnpicklingError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    struct.error,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RecursionError,
    MemoryError,
    UnicodeDecodeError,
    NotImplementedError,
    OSError,  # zipfile seeks to offsets read from the file: a damaged header gives EINVAL
)


def load_torch_file(path: str | os.PathLike) -> Any:
    """Load a ``torch.save`` file (zip or legacy format) with tensors as numpy arrays, without torch.

    Raises :class:`UnsafePickleError` for any global outside :data:`ALLOWED_GLOBALS` (or an attempt to
    change one), :class:`TorchFileError` naming the file for anything that is not a well-formed torch
    file (truncated, corrupted, views overlapping or exceeding their storage, sizes a zip cannot hold),
    ``FileNotFoundError`` if ``path`` does not exist. Both errors are ``ValueError`` subclasses.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        return _load_legacy(path)
    except TorchFileError:
        raise
    except _MALFORMED as error:
        raise TorchFileError(
            f"{path}: not a readable torch.save file, it may be truncated or corrupted "
            f"({type(error).__name__}: {error})"
        ) from error
