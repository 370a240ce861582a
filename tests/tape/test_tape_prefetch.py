"""The copy job's reader (O_DIRECT into a bounded pool of reused buffers) and the ring's fence
that frees a buffer once the drive has its blocks."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from blake3 import blake3

from tests.tape.fake_transport import FakeTape
from vmkeep.scsi.errors import VolumeOverflow
from vmkeep.scsi.ssc import TapeDrive
from vmkeep.storage.backends.local import LocalBackend
from vmkeep.tape import prefetch as pf
from vmkeep.tape.stream import BlockWriter


def _objects(root: Path) -> dict[str, bytes]:
    objs = {"config": b"{}", "index/00/small": os.urandom(1000)}
    for i in range(6):  # larger than MIN_DIRECT, unaligned sizes
        objs[f"data/{i:02d}"] = os.urandom(pf.MIN_DIRECT + 4096 * i + 17 * i)
    for key, data in objs.items():
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return objs


def _drop_cache(root: Path) -> None:
    """Write back and drop the page-cache pages of every file under ``root`` (as a pack
    written with O_DIRECT by a backup is, when the nightly copy reads it)."""
    for path in root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def test_prefetch_reads_every_object_exactly_with_bounded_buffers(tmp_path: Path) -> None:
    objs = _objects(tmp_path)
    _drop_cache(tmp_path)
    seen: dict[str, bytes] = {}
    for key, data, digest, release in pf.prefetch(LocalBackend(str(tmp_path)), list(objs)):
        assert digest == blake3(objs[key]).hexdigest()
        if len(objs[key]) >= pf.MIN_DIRECT:
            assert isinstance(data, memoryview) and data.readonly and release is not None
        else:
            assert isinstance(data, bytes) and release is None
        seen[key] = bytes(data)
        if release is not None:
            release()
    assert seen == objs


def test_packs_read_into_the_pool_are_hashed_read_by_read(tmp_path: Path) -> None:
    """Packs larger than a read (several ``CHUNK`` reads, unaligned ends) get the digest
    ``object_digest`` gives the whole object: a version-1 pack its name, version-2 and -3 packs
    XXH3, anything else BLAKE3 — computed as the reads arrive."""
    from vmkeep.tape.pax import object_digest

    sizes = (pf.CHUNK * 2 + 4096 * 3 + 5, pf.CHUNK + 1, pf.MIN_DIRECT + 17)
    objs: dict[str, bytes] = {}
    magics = (b"VMKPACK1", b"VMKPACK2", b"VMKPACK3")
    for i, (magic, size) in enumerate(zip(magics, sizes, strict=True)):
        name = f"packs/{i:02x}/" + f"{i:x}" * 64
        objs[name] = magic + os.urandom(size - len(magic))
    objs["data/raw"] = os.urandom(pf.CHUNK * 3 - 1)
    for key, data in objs.items():
        (tmp_path / key).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / key).write_bytes(data)
    _drop_cache(tmp_path)
    kinds = set()
    with pf.Prefetch(LocalBackend(str(tmp_path)), list(objs)) as reader:
        for key, data, digest, release in reader:
            assert release is not None  # read into a pool buffer, not got
            assert bytes(data) == objs[key]
            assert digest == object_digest(key, objs[key])
            kinds.add(digest[:5] if digest.startswith("xxh3:") else len(digest))
            release()
    assert kinds == {"xxh3:", 64}


@pytest.mark.parametrize("cuts", [(), (1,), (3, 8, 9), (4096, 4097, 70000)])
def test_an_object_digest_in_parts_is_the_whole_objects(cuts: tuple[int, ...]) -> None:
    from vmkeep.tape.pax import ObjectDigest, object_digest

    body = os.urandom(100_000)
    for name, data, b3_only in (
        ("packs/ab/" + "c" * 64, b"VMKPACK1" + body, False),
        ("packs/ab/" + "c" * 64, b"VMKPACK3" + body, False),
        ("packs/ab/" + "c" * 64, b"VMKPACK2" + body, True),
        ("index/" + "d" * 64 + ".parquet", body, False),
    ):
        digest = ObjectDigest(name, data[:8], b3_only=b3_only)
        for start, end in zip((0, *cuts), (*cuts, len(data)), strict=True):
            digest.update(data[start:end])
        assert digest.result() == object_digest(name, data, b3_only=b3_only)


def test_an_unreleased_buffer_stops_the_reader_not_the_job(tmp_path: Path) -> None:
    """The reader waits for a free buffer; a consumer that stops early (early warning) closes
    the generator and the waiting read gives up instead of hanging the job."""
    objs = _objects(tmp_path)
    _drop_cache(tmp_path)
    gen = pf.prefetch(LocalBackend(str(tmp_path)), list(objs))
    got = [next(gen) for _ in range(4)]  # config, index, two packs: never released
    assert got[3][3] is not None
    gen.close()  # returns: a load waiting in BufferPool.take was woken and gave up


def test_buffer_pool_waits_for_a_buffer_given_back() -> None:
    pool = pf.BufferPool(count=1)
    first = pool.take(100)
    taken = threading.Event()
    second: list[object] = []

    def take() -> None:
        second.append(pool.take(100))
        taken.set()

    t = threading.Thread(target=take)
    t.start()
    assert not taken.wait(0.2)  # no second buffer while the first is out
    pool.give(first)
    assert taken.wait(300)  # a hang guard
    t.join(300)
    assert second == [first]  # the same buffer, reused
    pool.close()


def test_fence_runs_after_every_earlier_block_is_written() -> None:
    fake = FakeTape()
    drive = TapeDrive(fake)
    w = BlockWriter(drive, 1024, depth=2)
    at_fence: list[int] = []
    w.write(bytes(1024 * 5))
    w.fence(lambda: at_fence.append(w.confirmed))
    w.write(bytes(1024))
    w.close()
    assert at_fence == [5 * 1024]
    assert fake.used() >= 6 * 1024


def test_fence_still_runs_after_a_drive_error() -> None:
    fake = FakeTape(capacity=2 * 1024)
    w = BlockWriter(TapeDrive(fake), 1024, depth=8)
    called = threading.Event()
    w.write(bytes(1024 * 4))  # the third block overflows; the fourth is dropped
    w.fence(called.set)
    w.abort()
    assert called.is_set()


def test_other_backends_and_buffered_reads_give_the_same_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A non-local backend is read with get() (a copy, nothing to release); a file system
    without O_DIRECT is read buffered into the same pool."""
    from vmkeep.storage.backends.retrying import RetryingBackend

    objs = _objects(tmp_path)
    wrapped = RetryingBackend(LocalBackend(str(tmp_path)))
    for key, data, _digest, release in pf.prefetch(wrapped, list(objs)):
        assert isinstance(data, bytes) and release is None and data == objs[key]
    monkeypatch.setattr(pf.direct_io, "supported", lambda _path: False)
    with pf.Prefetch(LocalBackend(str(tmp_path)), list(objs)) as reader:
        assert not reader._reader.direct
        for key, data, _digest, release in reader:
            assert bytes(data) == objs[key]
            if release is not None:
                release()


def test_packs_already_in_the_page_cache_are_mapped_not_read_again(tmp_path: Path) -> None:
    """A pack whose every page is cached is mapped (no O_DIRECT read from the disk, no pool
    buffer); a cold one, or one only partly cached, is read into the pool."""
    if not pf.direct_io.supported(str(tmp_path)):
        pytest.skip("O_DIRECT is not used on this file system")
    objs = _objects(tmp_path)
    _drop_cache(tmp_path)
    probe = os.open(tmp_path / "data/00", os.O_RDONLY)
    try:
        if pf.cached_pages(probe) is None:
            pytest.skip("this kernel has no cachestat(2): every pack is read with O_DIRECT")
        assert pf.cached_pages(probe) == 0
    finally:
        os.close(probe)
    warm = {"data/01", "data/03"}
    for key in warm:
        (tmp_path / key).read_bytes()
    half = os.open(tmp_path / "data/04", os.O_RDONLY)
    try:  # cached, then its second half dropped again
        os.read(half, len(objs["data/04"]))
        os.posix_fadvise(half, len(objs["data/04"]) // 2, 0, os.POSIX_FADV_DONTNEED)
        assert 0 < (pf.cached_pages(half) or 0) < len(objs["data/04"]) // 4096
    finally:
        os.close(half)
    seen: dict[str, bytes] = {}
    for key, data, digest, release in pf.prefetch(LocalBackend(str(tmp_path)), list(objs)):
        assert digest == blake3(objs[key]).hexdigest()
        if key in warm:
            # mapped: its release hands the mapping to the unmapper thread
            assert isinstance(data, memoryview) and data.readonly
            assert isinstance(release, pf._Unmap)
        elif len(objs[key]) >= pf.MIN_DIRECT:
            # O_DIRECT into a pool buffer, given back by its release
            assert release is not None and not isinstance(release, pf._Unmap)
        seen[key] = bytes(data)
        if release is not None:
            release()
    assert seen == objs


def test_buffers_are_private_prefaulted_and_made_beside_the_first_read(tmp_path: Path) -> None:
    """The pool's buffers are made at once by the preparer thread (bounded by the pool's
    count, sized for the largest of the first packs), private and writable."""
    objs = _objects(tmp_path)
    _drop_cache(tmp_path)
    with pf.Prefetch(LocalBackend(str(tmp_path)), list(objs)) as reader:
        reader._preparer.join(300)
        pool = reader._reader.pool
        assert pool._made == pf.BUFFERS
        for key, data, _digest, release in reader:
            assert bytes(data) == objs[key]
            if release is not None:
                release()
    pf.release_buffers()
    buf = pf._new_buffer(64 << 20)
    assert len(buf) == 64 << 20
    buf[0:4] = b"abcd"  # private and writable
    assert bytes(buf[0:4]) == b"abcd"


def test_a_mapped_cached_pack_is_a_read_only_view_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pack"
    data = os.urandom(3 << 20)
    path.write_bytes(data)
    for populate in (True, False):
        mapped = pf._map(str(path), populate=populate)
        assert mapped is not None
        view, _m = mapped
        assert view.readonly and bytes(view) == data


def test_a_mapped_pack_is_unmapped_off_the_releasing_thread(tmp_path: Path) -> None:
    """The release of a mapped object hands the mapping to the ``tape-unmap`` thread: once
    the views are gone it is closed there, not on the thread that released it (the drive's
    writer), and the release keeps no reference to it."""
    import gc
    import weakref

    path = tmp_path / "pack"
    path.write_bytes(os.urandom(2 << 20))
    mapped = pf._map(str(path), populate=True)
    assert mapped is not None
    view, m = mapped
    gone = threading.Event()
    closed_on: list[str] = []
    ref = weakref.ref(m, lambda _r: (closed_on.append(threading.current_thread().name),
                                     gone.set()))
    release = pf._unmapper.release_for(m)
    del mapped, m
    view.release()
    del view
    gc.collect()
    assert ref() is not None  # the release still holds it
    release()
    assert gone.wait(10)
    assert closed_on == ["tape-unmap"]
    release()  # a second call does nothing


def test_streaming_is_timed_from_the_first_block_handed_to_the_drive() -> None:
    """Bytes in the partial-block buffer have not reached the drive: the streaming phase
    starts with the first whole block (the raw writer's clock starts the same way)."""
    w = BlockWriter(TapeDrive(FakeTape()), 1024, depth=4)
    w.write(b"small header")
    assert w.started is None
    w.write(bytes(2048))
    assert w.started is not None
    w.close()
    assert w.finished is not None and w.finished >= w.started


class _QueueingTape(FakeTape):
    """A FakeTape whose WRITEs can be queued (``submit``): each runs when its result is
    collected, in order — as a target that executes its queue in order answers."""

    def __init__(self, **kw: int) -> None:
        super().__init__(**kw)
        self.most_in_flight = 0
        self._in_flight = 0

    def submit(self, cdb: bytes, data_out: bytes | memoryview, timeout: float = 60.0) -> object:
        self._in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self._in_flight)
        tape = self

        class _Pending:
            def result(self) -> tuple[bytes, int]:
                tape._in_flight -= 1
                return tape.execute(cdb, data_out=data_out, timeout=timeout)  # type: ignore[no-any-return]

        return _Pending()


def test_two_writes_queued_keep_the_accounting_exact() -> None:
    """With WRITEs queued two at a time, ``confirmed`` counts the blocks answered, fences
    run once the blocks before them are answered, and a failure stops sending: the error
    is reported, ``confirmed`` is the bytes before it."""
    tape = _QueueingTape()
    drive = TapeDrive(tape)
    assert drive.can_queue
    w = BlockWriter(drive, 1024, depth=0, outstanding=2)
    at_fence: list[int] = []
    w.write(bytes(1024 * 5))
    w.fence(lambda: at_fence.append(w.confirmed))
    w.write(bytes(1024))
    w.close()
    assert tape.most_in_flight == 2
    assert at_fence == [5 * 1024] and w.confirmed == 6 * 1024

    full = _QueueingTape(capacity=3 * 1024)
    w = BlockWriter(TapeDrive(full), 1024, depth=4, outstanding=2)
    fenced = threading.Event()
    w.write(bytes(1024 * 6))  # the fourth block overflows
    w.fence(fenced.set)
    with pytest.raises(VolumeOverflow):
        w.close()
    assert w.confirmed == 3 * 1024 and fenced.is_set()


def test_a_drive_that_cannot_queue_writes_one_block_at_a_time() -> None:
    tape = FakeTape()
    w = BlockWriter(TapeDrive(tape), 1024, depth=0, outstanding=2)
    w.write(bytes(1024 * 3))
    w.close()
    assert w.confirmed == 3 * 1024 and tape.used() >= 3 * 1024
