"""The SCSI layer: sense decoding, SSC semantics on a fake drive, and a real tgt target killed
mid-write (a transport error, never a silent success)."""

from __future__ import annotations

import io
import os
import socket
import tarfile
from pathlib import Path

import pytest

from tests.tape.fake_transport import FakeTape
from tests.tape.vtl_helpers import configure
from vmkeep.scsi.errors import (
    DeviceNotFound,
    LoginFailed,
    MediumError,
    TransportError,
    UnitAttention,
    VolumeOverflow,
)
from vmkeep.scsi.iscsi import IscsiTransport
from vmkeep.scsi.sense import MEDIUM_ERROR, NO_SENSE, decode_sense, fixed_sense
from vmkeep.scsi.sg import SgTransport
from vmkeep.scsi.ssc import FilemarkReached, TapeDrive
from vmkeep.tape.errors import HostileTape
from vmkeep.tape.pax import PaxWriter, read_members
from vmkeep.tape.stream import BlockReader, BlockWriter


def test_sense_fixed_and_descriptor_formats() -> None:
    s = decode_sense(fixed_sense(MEDIUM_ERROR, 0x11, 0, ili=True, information=-512))
    assert (s.key, s.asc, s.ili, s.information) == (MEDIUM_ERROR, 0x11, True, -512)
    desc = bytes([0x72, NO_SENSE, 0, 2, 0, 0, 0, 4, 0x04, 2, 0, 0x40])
    d = decode_sense(desc)
    assert d.eom and not d.filemark and d.ascq == 2
    assert not decode_sense(b"\x00").valid


def test_early_warning_is_written_volume_overflow_is_not() -> None:
    fake = FakeTape(capacity=10 * 512, early_warning=6 * 512)
    drive = TapeDrive(fake)
    flags = [drive.write_block(b"x" * 512) for _ in range(8)]
    assert flags[:6] == [False] * 6 and flags[6:] == [True, True]
    with pytest.raises(VolumeOverflow):
        for _ in range(5):
            drive.write_block(b"y" * 512)
    assert fake.used() == 10 * 512  # the overflowing block is not on tape


def test_unit_attention_is_consumed_by_wait_ready_and_typed_otherwise() -> None:
    fake = FakeTape()
    fake.unit_attentions = 2
    TapeDrive(fake).wait_ready()
    fake.unit_attentions = 1
    with pytest.raises(UnitAttention):
        TapeDrive(fake).write_block(b"z")


def test_medium_error_on_read_is_raised() -> None:
    fake = FakeTape()
    drive = TapeDrive(fake)
    drive.write_block(b"a" * 512)
    drive.write_filemarks(1)
    drive.rewind()
    fake.medium_error_at = 0
    with pytest.raises(MediumError):
        drive.read_block(512)
    fake.medium_error_at = None
    assert drive.read_block(512) == b"a" * 512
    with pytest.raises(FilemarkReached):
        drive.read_block(512)


def test_block_writer_overflow_keeps_accounting_honest() -> None:
    fake = FakeTape(capacity=8 * 1024)
    w = BlockWriter(TapeDrive(fake), 1024, depth=2)
    with pytest.raises(VolumeOverflow):
        for _ in range(20):
            w.write(b"q" * 1024)
        w.close()
    w.abort()
    assert w.confirmed == 8 * 1024 == fake.used()


def test_pax_roundtrip_through_blocks() -> None:
    fake = FakeTape()
    drive = TapeDrive(fake)
    w = BlockWriter(drive, 4096)
    pax = PaxWriter(w, 0)
    pax.add("config", b"{}")
    pax.add("packs/ab/" + "ab" * 32, b"not really a pack")
    pax.close()
    w.close()
    drive.rewind()
    with pytest.raises(HostileTape):  # the pack's content does not match its name
        list(read_members(BlockReader(drive, 4096)))
    drive.rewind()
    got = list(read_members(BlockReader(drive, 4096), lambda n: n == "config"))
    assert [(n, d) for n, d, _ in got] == [("config", b"{}")]


def _tar(
    *members: tuple[str, bytes], kind: bytes = tarfile.REGTYPE, pax: dict[str, str] | None = None
) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.type = len(data), kind
            if pax:
                info.pax_headers = pax
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize(
    "raw",
    [
        _tar(("../etc/passwd", b"x")),
        _tar(("/config", b"x")),
        _tar(("packs/../../x", b"x")),
        _tar(("config", b""), kind=tarfile.SYMTYPE),
        _tar(("config", b"x"), pax={"comment": "A" * 200_000}),
        _tar(("config", b"x"), pax={"VMKEEP.b3": "0" * 64}),
        _tar(("config", b"x"), pax={"VMKEEP.xxh3": "0" * 32}),
    ],
    ids=["dotdot", "absolute", "nested-dotdot", "symlink", "huge-pax-header", "bad-b3",
         "bad-xxh3"],
)
def test_hostile_tape_content_is_refused(raw: bytes) -> None:
    with pytest.raises(HostileTape):
        list(read_members(io.BytesIO(raw)))


def test_sg_backend_never_creates_a_device_node(tmp_path: Path) -> None:
    missing = tmp_path / "sg9"
    with pytest.raises(DeviceNotFound):
        SgTransport(str(missing))
    assert not missing.exists()
    regular = tmp_path / "file"
    regular.write_bytes(b"")
    with pytest.raises(DeviceNotFound):
        SgTransport(str(regular))


def test_a_failed_login_says_why(vtl) -> None:  # type: ignore[no-untyped-def]
    """libiscsi words a refused connection as "Can not reconnect right now": the user is told
    the portal refused, or what the target said (a wrong IQN, a LUN it does not have)."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LoginFailed, match=r"cannot connect to 127\.0\.0\.1:.*refused"):
        IscsiTransport(f"iscsi://127.0.0.1:{port}/iqn.2026-12.org.vmkeep:none/1")
    portal = vtl.url.rsplit("/", 1)[0]
    with pytest.raises(LoginFailed, match="Target not found") as wrong_iqn:
        IscsiTransport(f"{portal}/iqn.2026-12.org.vmkeep:nosuch/1")
    assert "no command was sent" in str(wrong_iqn.value.get_message())
    with pytest.raises(LoginFailed, match=r"login to .* failed"):
        IscsiTransport(f"{vtl.url}/9")  # no LUN 9
    assert issubclass(LoginFailed, TransportError)  # callers that catch transport errors still do


@pytest.mark.parametrize("depth", [4, 0])
def test_killed_tgtd_mid_write_is_a_transport_error(vtl, depth: int) -> None:  # type: ignore[no-untyped-def]
    """With two WRITEs queued, through the ring (depth 4) or inline (depth 0)."""
    lib = configure(vtl)
    lib.load("VMK001L6", 0)
    drive = TapeDrive(IscsiTransport(f"{vtl.url}/1"))
    drive.wait_ready()
    drive.set_variable_blocks()
    assert drive.can_queue
    w = BlockWriter(drive, 64 * 1024, depth=depth, outstanding=2)
    for _ in range(8):
        w.write(b"k" * 64 * 1024)
    vtl.kill()
    with pytest.raises(TransportError):
        for _ in range(10_000):  # bounded: the thread reports the failure on a later write
            w.write(b"k" * 64 * 1024)
        w.close()
    w.abort()
    assert w.confirmed < w.written
    with pytest.raises(TransportError):
        drive.write_block(b"after")  # the session is gone; nothing pretends to work
    lib.close()


def test_queued_writes_reach_the_tape_in_order(library) -> None:  # type: ignore[no-untyped-def]
    """Blocks written with two WRITEs queued read back in order, each exactly."""
    blocks = [os.urandom(65536) for _ in range(40)]
    with library.drive_lock(0):
        d = library.open_drive(0)
        library.load("VMK003L6", 0)
        d.wait_ready()
        d.set_variable_blocks()
        d.rewind()
        waits = [d.submit_write(b) for b in blocks[:2]]
        for b in blocks[2:]:
            assert waits.pop(0)() is False
            waits.append(d.submit_write(b))
        assert [w() for w in waits] == [False, False]
        d.write_filemarks(1)
        d.rewind()
        assert [d.read_block(65536) for _ in blocks] == blocks
        d.close()


def test_two_drives_write_at_once(library) -> None:  # type: ignore[no-untyped-def]
    import threading

    errors: list[BaseException] = []

    def job(i: int, barcode: str) -> None:
        try:
            with library.drive_lock(i):
                d = library.open_drive(i)
                library.load(barcode, i)
                d.wait_ready()
                d.set_variable_blocks()
                for _ in range(32):
                    d.write_block(bytes([i]) * 65536)
                d.write_filemarks(1)
                d.close()
        except BaseException as exc:
            errors.append(exc)

    from vmkeep.tape.library import Library

    libs = [Library(library.cfg), Library(library.cfg)]
    threads = [threading.Thread(target=lambda i=i: job(i, f"VMK00{i + 1}L6")) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    from vmkeep.tape.errors import NoDrive

    with library.drive_lock(0), library.drive_lock(1), pytest.raises(NoDrive), \
            library.drive_lock():
        pass
    for lib in libs:
        lib.close()


def test_restore_positions_with_locate_where_supported() -> None:
    from vmkeep.tape.restore import position

    fake = FakeTape()
    drive = TapeDrive(fake)
    drive.write_block(b"label")
    drive.write_filemarks(1)
    drive.write_block(b"file1")
    drive.write_filemarks(1)
    where = drive.read_position()
    assert where == (0, 4)
    drive.write_block(b"file2")
    drive.write_filemarks(1)
    position(drive, 2, where[1])  # LOCATE
    assert drive.read_block(5) == b"file2"
    position(drive, 1, None)  # rewind + space filemarks
    assert drive.read_block(5) == b"file1"
