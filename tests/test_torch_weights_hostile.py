"""Hostile and broken weight files: no process poisoning, no memory amplification, only our own errors.

The files are written opcode by opcode (no torch, no pickling of objects), so each test controls exactly
what the restricted unpickler is fed.
"""

from __future__ import annotations

import pickle
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from subspace_jax.backbones import TorchFileError, UnsafePickleError, load_torch_file, torch_weights


def _uint(value: int) -> bytes:
    """The shortest protocol-2 opcode pushing a non-negative int."""
    if value < 256:
        return b"K" + bytes([value])
    if value < 65536:
        return b"M" + struct.pack("<H", value)
    if value < 2**31:
        return b"J" + struct.pack("<i", value)
    raw = value.to_bytes((value.bit_length() + 8) // 8, "little")
    return b"\x8a" + bytes([len(raw)]) + raw  # LONG1


def _str(text: str) -> bytes:
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _ordered_dict() -> bytes:
    return _global("collections", "OrderedDict") + b")R"


def _tensor(key: str, numel: int, offset: int, size: tuple, stride: tuple, legacy: bool = False) -> bytes:
    """``torch._utils._rebuild_tensor_v2(<FloatStorage key>, offset, size, stride, False, OrderedDict())``."""
    pid = [_str("storage"), _global("torch", "FloatStorage"), _str(key), _str("cpu"), _uint(numel)]
    if legacy:
        pid.append(b"N")
    storage = _tuple(pid) + b"Q"  # BINPERSID
    args = [storage, _uint(offset), _tuple([_uint(s) for s in size]), _tuple([_uint(s) for s in stride])]
    args += [b"\x89", _ordered_dict()]
    return _global("torch._utils", "_rebuild_tensor_v2") + _tuple(args) + b"R"


def _state_dict(entries: dict[str, bytes]) -> bytes:
    body = b"".join(_str(name) + value + b"s" for name, value in entries.items())
    return b"\x80\x02" + _ordered_dict() + body + b"."


def write_zip(path: Path, data_pkl: bytes, storages: dict[str, bytes], deflate: bool = False) -> Path:
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method) as archive:
        archive.writestr("archive/data.pkl", data_pkl)
        archive.writestr("archive/byteorder", "little")
        for key, raw in storages.items():
            archive.writestr(f"archive/data/{key}", raw)
    return path


def legit_file(path: Path) -> tuple[Path, np.ndarray]:
    values = np.arange(6, dtype=np.float32)
    pkl = _state_dict({"w": _tensor("0", 6, 0, (2, 3), (3, 1)), "t": _tensor("0", 6, 0, (3, 2), (1, 3))})
    return write_zip(path, pkl, {"0": values.tobytes()}), values


def test_the_builder_makes_loadable_files(tmp_path):
    path, values = legit_file(tmp_path / "ok.pth")
    loaded = load_torch_file(path)
    np.testing.assert_array_equal(loaded["w"], values.reshape(2, 3))
    np.testing.assert_array_equal(loaded["t"], values.reshape(2, 3).T)


# --- item 8: a hostile pickle cannot change what later loads see --------------------------------------


_HOSTILE = {
    # BUILD with a dict state on the storage type: the old unpickler set FloatStorage.dtype = "str".
    "storage_dict_state": _global("torch", "FloatStorage") + b"}" + _str("dtype") + _str("str") + b"sb.",
    # BUILD with slot state on a rebuild function: would set its __defaults__ for every later load.
    "function_slot_state": _global("torch._utils", "_rebuild_tensor_v2")
    + b"N}"
    + _str("__defaults__")
    + _uint(1)
    + b"\x85s\x86b.",
    "bfloat16_class_state": _global("torch", "BFloat16Storage") + b"}" + _str("x") + _uint(1) + b"sb.",
}


@pytest.mark.parametrize("payload", sorted(_HOSTILE))
def test_a_hostile_build_is_refused_and_later_loads_still_work(tmp_path, payload):
    hostile = write_zip(tmp_path / "hostile.pth", b"\x80\x02" + _HOSTILE[payload], {})
    with pytest.raises(UnsafePickleError, match="hostile.pth.*refusing to change the allow-listed global"):
        load_torch_file(hostile)
    assert torch_weights._STORAGE_TYPES["FloatStorage"].dtype == np.float32
    assert torch_weights._rebuild_tensor_v2.__defaults__ == (False, None, None)
    assert not hasattr(torch_weights._BFloat16Storage, "x")
    path, values = legit_file(tmp_path / "ok.pth")
    np.testing.assert_array_equal(load_torch_file(path)["w"], values.reshape(2, 3))


def test_unsafe_pickle_error_is_a_value_error_and_an_unpickling_error():
    assert issubclass(UnsafePickleError, ValueError) and issubclass(UnsafePickleError, pickle.UnpicklingError)


# --- item 9: memory amplification is refused before anything is allocated ------------------------------


def _peak_traced(fn) -> int:
    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize(
    ("numel", "size", "stride", "message"),
    [
        (1, (2000, 2000), (0, 0), "overlapping"),  # 16 MB from 4 bytes
        (1, (20000, 20000), (0, 0), "overlapping"),  # 1.6 GB from 4 bytes
        (100, (50, 50), (1, 1), "overlapping"),  # a sliding window reading every element 50 times
        (100, (10, 10, 10), (10, 1, 0), "overlapping"),
        (100, (101,), (1,), "exceeds its storage"),
    ],
)
def test_views_that_overlap_or_exceed_their_storage_are_refused(tmp_path, numel, size, stride, message):
    path = write_zip(
        tmp_path / "view.pth",
        _state_dict({"w": _tensor("0", numel, 0, size, stride)}),
        {"0": np.zeros(numel, np.float32).tobytes()},
    )
    peak = _peak_traced(lambda: _expect_match(path, f"view.pth.*{message}"))
    assert peak < 4 << 20, f"allocated {peak} bytes before refusing"


def test_size_one_dimensions_may_have_any_stride(tmp_path):
    path = write_zip(
        tmp_path / "ok.pth",
        _state_dict({"w": _tensor("0", 4, 0, (1, 4, 1), (0, 1, 0))}),
        {"0": np.arange(4, dtype=np.float32).tobytes()},
    )
    np.testing.assert_array_equal(load_torch_file(path)["w"], np.arange(4, dtype=np.float32).reshape(1, 4, 1))


def test_many_copied_views_of_one_storage_are_refused(tmp_path):
    # 300 transposed (non-contiguous, so copied) views of a 40 kB storage would need 12 MB.
    entries = {f"t{i}": _tensor("0", 10000, 0, (100, 100), (1, 100)) for i in range(300)}
    path = write_zip(
        tmp_path / "views.pth", _state_dict(entries), {"0": np.zeros(10000, np.float32).tobytes()}
    )
    with pytest.raises(TorchFileError, match="views.pth.*memory amplification"):
        load_torch_file(path)


def test_a_deflate_bomb_is_refused_before_it_is_inflated(tmp_path):
    numel = 4 << 20  # 16 MB of zeros deflate to about 16 kB
    path = write_zip(
        tmp_path / "bomb.pth",
        _state_dict({"w": _tensor("0", numel, 0, (numel,), (1,))}),
        {"0": bytes(4 * numel)},
        deflate=True,
    )
    assert path.stat().st_size < 100_000
    peak = _peak_traced(lambda: _expect_match(path, "bomb.pth.*more than its compression can produce"))
    assert peak < 4 << 20, f"allocated {peak} bytes before refusing"


def _expect_match(path: Path, message: str) -> None:
    with pytest.raises(TorchFileError, match=message):
        load_torch_file(path)


def _forge_declared_size(path: Path, member: str, declared: int) -> None:
    """Rewrite the uncompressed-size fields of ``member`` in the local and central headers."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo(member)
    real = struct.pack("<I", info.file_size)
    name = member.encode()
    for signature, size_at in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):
        start = 0
        while (start := data.find(signature, start)) >= 0:
            name_len = struct.unpack_from("<H", data, start + (26 if signature == b"PK\x03\x04" else 28))[0]
            name_at = start + (30 if signature == b"PK\x03\x04" else 46)
            if data[name_at : name_at + name_len] == name:
                assert data[start + size_at : start + size_at + 4] == real
                struct.pack_into("<I", data, start + size_at, declared)
            start += 4
    path.write_bytes(bytes(data))


def test_absurd_or_mismatched_declared_sizes_are_refused_before_reading(tmp_path):
    # A member whose header claims 4 GB - 1 bytes (and a pickle that agrees) from a few compressed bytes.
    numel = (2**32 - 4) // 4
    path = write_zip(
        tmp_path / "forged.pth",
        _state_dict({"w": _tensor("0", numel, 0, (numel,), (1,))}),
        {"0": bytes(4096)},
        deflate=True,
    )
    _forge_declared_size(path, "archive/data/0", 4 * numel)
    peak = _peak_traced(lambda: _expect_match(path, "forged.pth.*more than its compression can produce"))
    assert peak < 4 << 20
    # A member that holds more than the storage the pickle declares.
    path = write_zip(
        tmp_path / "long.pth",
        _state_dict({"w": _tensor("0", 4, 0, (4,), (1,))}),
        {"0": bytes(1 << 20)},
    )
    _expect_match(path, "long.pth.*declares 1048576 bytes, expected 16")


def test_a_member_inflating_past_its_declared_size_is_cut_off(tmp_path):
    path = write_zip(
        tmp_path / "liar.pth",
        _state_dict({"w": _tensor("0", 4, 0, (4,), (1,))}),
        {"0": bytes(1 << 20)},
        deflate=True,
    )
    _forge_declared_size(path, "archive/data/0", 16)
    peak = _peak_traced(lambda: _expect_match(path, "liar.pth"))
    assert peak < 1 << 20


def test_legacy_storages_cannot_claim_more_than_the_file_holds(tmp_path):
    header = b"".join(
        pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True})
    )
    # Three storages of 1000 floats each (12 kB together) in a file of about 6 kB: each alone would fit.
    entries = {f"w{i}": _tensor(str(i), 1000, 0, (1000,), (1,), legacy=True) for i in range(3)}
    entries["padding"] = _str("x" * 5000)
    path = tmp_path / "legacy.pth"
    path.write_bytes(header + _state_dict(entries))
    assert 4000 < path.stat().st_size < 12000
    _expect_match(path, "legacy.pth.*claims 1000 elements, more than the file holds")


# --- item 10: truncated or corrupted files give our error, naming the file -----------------------------


@pytest.mark.parity
@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_truncated_files_raise_our_error_naming_the_file(tmp_path, zip_format):
    import torch

    full = tmp_path / "full.pth"
    torch.save(
        {"w": torch.arange(300.0), "b": torch.ones(3, 4).t()}, full, _use_new_zipfile_serialization=zip_format
    )
    data = full.read_bytes()
    lengths = sorted({40, *range(0, len(data), max(1, len(data) // 97))})
    for length in lengths:
        cut = tmp_path / f"cut{length}.pth"
        cut.write_bytes(data[:length])
        with pytest.raises(TorchFileError, match=f"cut{length}.pth"):
            load_torch_file(cut)


def test_flipped_bytes_raise_only_our_errors(tmp_path):
    path, _ = legit_file(tmp_path / "ok.pth")
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    for trial in range(150):
        damaged = bytearray(data)
        for index in rng.integers(0, len(data), size=3):
            damaged[index] ^= int(rng.integers(1, 256))
        target = tmp_path / f"flip{trial}.pth"
        target.write_bytes(bytes(damaged))
        try:
            load_torch_file(target)
        except TorchFileError as error:
            assert f"flip{trial}.pth" in str(error)
