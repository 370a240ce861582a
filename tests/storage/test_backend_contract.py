"""One contract suite that every storage backend runs (see vmkeep.storage.backend)."""

from __future__ import annotations

import os
import uuid

import pytest

from vmkeep.storage.backend import TEMP_MARKER, Backend, open_backend
from vmkeep.storage.backends.faulty import FaultyBackend
from vmkeep.storage.errors import ObjectNotFound, TargetUnreachable


@pytest.fixture(params=["local", "memory", "faulty-local", "sftp", "smb", "s3",
                        "limited-local", "limited-sftp", "limited-smb", "limited-s3"])
def backend(
    request: pytest.FixtureRequest, tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> Backend:
    sub = f"contract-{uuid.uuid4().hex}"
    kind = request.param
    if kind.startswith("limited-"):  # under bandwidth limits (too high to wait for here)
        monkeypatch.setenv("VMKEEP_LIMIT_UPLOAD", "10000000")
        monkeypatch.setenv("VMKEEP_LIMIT_DOWNLOAD", "10000000")
        kind = kind.removeprefix("limited-")
    if kind == "local":
        return open_backend(str(tmp_path))
    if kind == "memory":
        return open_backend(f"memory://{sub}")
    if kind in ("sftp", "smb", "s3"):
        server = request.getfixturevalue(f"{kind}_server")
        return open_backend(server.url(sub), server.options())
    return FaultyBackend(open_backend(f"file://{tmp_path}"))


def test_put_get_roundtrip(backend: Backend) -> None:
    backend.put("packs/ab/abcd", b"hello world")
    assert backend.get("packs/ab/abcd") == b"hello world"
    assert backend.get("packs/ab/abcd", 6, 5) == b"world"
    assert backend.get("packs/ab/abcd", 6) == b"world"
    assert backend.size("packs/ab/abcd") == 11
    assert backend.exists("packs/ab/abcd")


def test_objects_of_many_slices_and_their_ranges(backend: Backend) -> None:
    """Objects larger than a paced slice (256 KiB), whole and in ranges across slice edges."""
    data = os.urandom(700_001)
    backend.put("packs/cd/large", data)
    assert backend.get("packs/cd/large") == data
    assert backend.get("packs/cd/large", 262_000, 300_000) == data[262_000:562_000]
    assert backend.get("packs/cd/large", 524_288) == data[524_288:]
    assert backend.get("packs/cd/large", 699_990, 100) == data[699_990:]
    assert backend.size("packs/cd/large") == len(data)


def test_a_range_past_the_end_reads_short_at_once(backend: Backend) -> None:
    """A range starting at or past the end reads as nothing (a pack overwritten by something
    shorter is then "truncated", ``DataCorrupt``), on every backend: S3 answers 416, which was
    taken for an unreachable target and retried four times, each read (~70 s in ``check``)."""
    backend.put("packs/ef/short", b"ransom note")
    assert backend.get("packs/ef/short", 11, 5) == b""
    assert backend.get("packs/ef/short", 4096, 65536) == b""
    assert backend.get("packs/ef/short", 4096) == b""
    assert backend.get("packs/ef/short", 7, 100) == b"note"


def test_missing_objects_raise_typed_errors(backend: Backend) -> None:
    with pytest.raises(ObjectNotFound):
        backend.get("index/nope")
    with pytest.raises(ObjectNotFound):
        backend.size("index/nope")
    assert not backend.exists("index/nope")
    backend.delete("index/nope")  # idempotent


def test_list_and_delete(backend: Backend) -> None:
    for i in range(5):
        backend.put(f"packs/{i:02x}/obj{i}", bytes([i]) * (i + 1))
    backend.put("index/x.parquet", b"i")
    listed = dict(backend.list("packs"))
    assert listed == {f"packs/{i:02x}/obj{i}": i + 1 for i in range(5)}
    assert list(backend.list("manifests")) == []
    backend.delete("packs/00/obj0")
    assert "packs/00/obj0" not in dict(backend.list("packs"))


def test_overwrite_replaces(backend: Backend) -> None:
    backend.put("config", b"one")
    backend.put("config", b"two!")
    assert backend.get("config") == b"two!"


def test_invalid_keys_are_refused(backend: Backend) -> None:
    for key in ("../escape", "/abs", "a/../../b"):
        with pytest.raises(ValueError):
            backend.put(key, b"x")


def test_local_put_failure_leaves_nothing(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An exception half-way through a put publishes nothing and leaves no temp file."""
    backend = open_backend(str(tmp_path))

    def boom(fd: int) -> None:
        raise OSError(5, "injected I/O error")

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(TargetUnreachable):
        backend.put("packs/aa/aabb", b"x" * 100_000)
    monkeypatch.undo()
    assert not backend.exists("packs/aa/aabb")
    leftovers = [n for _, _, files in os.walk(tmp_path) for n in files if TEMP_MARKER in n]
    assert leftovers == []


def test_local_target_full_is_typed(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from vmkeep.storage.errors import TargetFull

    backend = open_backend(str(tmp_path))
    real_write = os.write

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(TargetFull):
        backend.put("packs/aa/full", b"x" * 10)
    monkeypatch.setattr(os, "write", real_write)
    assert not backend.exists("packs/aa/full")


def test_faulty_backend_injects(tmp_path) -> None:  # type: ignore[no-untyped-def]
    faulty = FaultyBackend(open_backend(str(tmp_path)))
    faulty.fail("put", when=lambda k: k.startswith("index/"), times=1)
    faulty.put("packs/aa/1", b"ok")
    with pytest.raises(TargetUnreachable):
        faulty.put("index/1", b"nope")
    faulty.put("index/1", b"second try works")
    assert faulty.get("index/1") == b"second try works"


def test_list_times_are_plausible(backend: Backend) -> None:
    import time

    backend.put("index/t.parquet", b"abc")
    rows = list(backend.list_times("index"))
    assert [(k, s) for k, s, _ in rows] == [("index/t.parquet", 3)]
    mtime = rows[0][2]
    assert mtime is None or abs(mtime - time.time()) < 3600


def test_free_space_is_the_targets_or_unknown(backend: Backend) -> None:
    """Local paths and SMB shares know their volume's size and free space; SFTP, S3 and the
    in-memory store say ``None``.  Every wrapper passes it through."""
    backend.put("config", b"x")
    found = backend.free_space()
    location = str(getattr(backend, "location", ""))
    inner = getattr(backend, "inner", backend)
    while hasattr(inner, "inner"):
        inner = inner.inner
    kind = getattr(inner, "protocol", "file" if type(inner).__name__ == "LocalBackend" else "")
    if kind in ("file", "smb"):
        assert found is not None, location
        total, free = found
        assert 0 < free <= total
    else:
        assert found is None, location
