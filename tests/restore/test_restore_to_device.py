"""``vmkeep restore image --device``: a disk written into a real block device (a loop device over
a file that holds old data), every byte of it — all-zero frames and all-zero pieces inside frames
included, which a fresh file keeps as holes but a device must have zeroed — and the refusals that
come before anything is written: not a block device, too small, in use (mounted or held),
``--device`` not given.  Also ``--to -``: every byte of the disk on standard output.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.missing import missing
from tests.restore.restore_helpers import VMKEEP, run_cli
from tests.storage.storage_helpers import backup
from vmkeep.storage.codec import ZERO_ID, decode_recipe
from vmkeep.storage.disk_restore import DEVICE_BLOCK, _DeviceSink, restore_disk_to_device
from vmkeep.storage.errors import RestoreDeviceIncomplete
from vmkeep.storage.pack import pack_key
from vmkeep.storage.repository import Repository

MIB = 1 << 20
OLD = b"\xa5"  # what the device holds before the restore


def disk_bytes() -> bytes:
    """17 MiB + 4,097 bytes: random and text frames, all-zero frames (one, then ten: more than
    a whole block of the device sink), and a 700 KiB run of zeros starting at an odd offset
    inside a frame of text (whole content-defined pieces of zeros, with edges that are not
    sector-aligned)."""
    rng = random.Random(5)
    words = [bytes(rng.choice(b"abcdefgh") for _ in range(rng.randrange(2, 9))) for _ in range(300)]
    text = b" ".join(rng.choice(words) for _ in range(400_000))[: 3 * MIB]
    zero_run = bytes(700 * 1024)
    data = (
        rng.randbytes(MIB)  # frame 0
        + bytes(MIB)  # frame 1: all zero
        + text[: 300_001] + zero_run + text[300_001 : 2 * MIB - len(zero_run)]  # frames 2-3
        + rng.randbytes(2 * MIB)  # frames 4-5
        + text[2 * MIB : 3 * MIB]  # frame 6
        + bytes(10 * MIB)  # frames 7-16: the device's second 8 MiB block is zeroed whole
        + rng.randbytes(4097)  # a short last frame
    )
    return data


@pytest.fixture(scope="module")
def point(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("device-restore")
    image = base / "disk.img"
    image.write_bytes(disk_bytes())
    repo = Repository.init(str(base / "repo"))
    restore_point, _ = backup(repo, image, name="dev")
    table = restore_point.chunks[0]
    zero_frames = sum(table.blob_id(i) == ZERO_ID for i in range(len(table)))
    zero_pieces = 0
    for i in range(len(table)):
        loc = repo.locate(table.blob_id(i))
        if loc is not None and loc.codec == 2:
            stored = repo.backend.get(pack_key(loc.pack_id), loc.offset, loc.stored_length)
            pieces = decode_recipe(stored, loc.raw_length, "test")
            zero_pieces += sum(p == ZERO_ID for p, _ in pieces)
    assert zero_frames >= 1 and zero_pieces >= 1, (zero_frames, zero_pieces)  # what is tested
    return {"repo": str(base / "repo"), "id": restore_point.id, "bytes": image.read_bytes()}


@pytest.fixture
def loop_device(tmp_path: Path) -> Iterator[Any]:
    """``make(size)`` → a loop device over a file of ``size`` bytes of old data (detached
    after the test); ``backing(dev)`` the file's path."""
    if shutil.which("losetup") is None:
        missing("losetup is not installed")
    made: dict[str, Path] = {}

    def make(size: int) -> str:
        assert size % 4096 == 0  # a loop device ends at the last whole sector of its file
        backing = tmp_path / f"dev{len(made)}.img"
        backing.write_bytes(OLD * size)
        proc = subprocess.run(["losetup", "-f", "--show", str(backing)], capture_output=True,
                              text=True)
        if proc.returncode != 0:
            missing(f"no loop device: {proc.stderr.strip()}")
        made[proc.stdout.strip()] = backing
        return proc.stdout.strip()

    try:
        yield make
    finally:
        for dev in made:
            subprocess.run(["losetup", "-d", dev], check=False)


def read_device(dev: str, size: int) -> bytes:
    with open(dev, "rb") as f:
        return f.read(size)


def one_line_error(code: int, err: str, want: int = 15) -> str:
    assert code == want, (code, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_a_disk_restored_into_a_block_device_is_every_byte_of_it(
    point: dict[str, Any], loop_device: Any, tmp_path: Path
) -> None:
    size = len(point["bytes"])
    capacity = size + 3 * MIB + (-size % 4096)  # larger than the disk: the rest stays as it was
    dev = loop_device(capacity)
    code, out, err = run_cli("restore", "image", point["id"][:12], "--to", dev, "--device",
                             "--json", repo=point["repo"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["bytes"] == size and summary["target"] == dev
    written = read_device(dev, capacity)
    assert len(written) == capacity and written[:size] == point["bytes"]
    assert written[size:] == OLD * (capacity - size)

    # through a symlink, as /dev/disk/by-id/… and /dev/VG/LV are: the device is written
    link = tmp_path / "by-id-disk"
    link.symlink_to(dev)
    with open(dev, "r+b") as f:
        f.write(OLD * size)
    code, _, err = run_cli("restore", "image", point["id"][:12], "--to", str(link), "--device",
                           repo=point["repo"])
    assert code == 0, err
    assert link.is_symlink() and read_device(dev, size) == point["bytes"]


def test_without_device_a_block_device_is_refused_and_untouched(
    point: dict[str, Any], loop_device: Any, tmp_path: Path
) -> None:
    size = len(point["bytes"])
    dev = loop_device(size + (-size % 4096))
    link = tmp_path / "link-to-disk"
    link.symlink_to(dev)
    for target in (dev, str(link)):
        for extra in ([], ["--overwrite"]):
            code, _, err = run_cli("restore", "image", point["id"][:12], "--to", target, *extra,
                                   repo=point["repo"])
            assert "pass --device" in one_line_error(code, err)
    assert link.is_symlink() and os.readlink(link) == dev  # not replaced by a regular file
    assert read_device(dev, size) == OLD * size


def test_a_device_smaller_than_the_disk_is_refused_before_anything_is_written(
    point: dict[str, Any], loop_device: Any
) -> None:
    size = len(point["bytes"])
    dev = loop_device(4 * MIB)
    code, _, err = run_cli("restore", "image", point["id"][:12], "--to", dev, "--device",
                           repo=point["repo"])
    assert f"holds only {4 * MIB} bytes" in one_line_error(code, err)
    assert str(size) in err
    assert read_device(dev, 4 * MIB) == OLD * (4 * MIB)


def test_a_device_in_use_is_refused(point: dict[str, Any], loop_device: Any) -> None:
    """Held exclusively by another program (what a mount, an md array or device-mapper does):
    the kernel refuses the restore's own exclusive open."""
    size = len(point["bytes"])
    dev = loop_device(size + (-size % 4096))
    holder = os.open(dev, os.O_RDONLY | os.O_EXCL)
    try:
        code, _, err = run_cli("restore", "image", point["id"][:12], "--to", dev, "--device",
                               repo=point["repo"])
    finally:
        os.close(holder)
    assert "in use" in one_line_error(code, err)
    assert read_device(dev, size) == OLD * size


def test_device_refuses_what_is_not_a_block_device(point: dict[str, Any], tmp_path: Path) -> None:
    image = tmp_path / "file.img"
    image.write_bytes(b"an image file")
    for target, says in ((image, "regular file"), (tmp_path / "absent", "does not exist"),
                         (Path("/dev/null"), "character device")):
        code, _, err = run_cli("restore", "image", point["id"][:12], "--to", str(target),
                               "--device", repo=point["repo"])
        assert says in one_line_error(code, err) and "with --device" in err
    assert image.read_bytes() == b"an image file"
    code, _, err = run_cli("restore", "image", point["id"][:12], "--to", str(image), "--device",
                           "--format", "vmdk", repo=point["repo"])
    one_line_error(code, err, want=2)


def test_a_restore_that_fails_midway_says_the_device_is_partly_written(
    point: dict[str, Any], loop_device: Any, tmp_path: Path
) -> None:
    """A damaged pack found after the device was written into: the typed error names the
    device as partly restored (exit code 15), not only the repository's damage."""
    size = len(point["bytes"])
    dev = loop_device(size + (-size % 4096))
    broken = tmp_path / "repo"
    shutil.copytree(point["repo"], broken)
    packs = sorted((broken / "packs").rglob("*"), key=lambda p: p.stat().st_size)
    victim = packs[-1]  # the largest data pack
    victim.chmod(0o644)
    data = bytearray(victim.read_bytes())
    data[100:4196] = bytes(4096)
    victim.write_bytes(bytes(data))
    repo = Repository.open(str(broken))
    with pytest.raises(RestoreDeviceIncomplete, match="partly restored") as caught:
        restore_disk_to_device(repo, repo.load_point(point["id"]), 0, dev)
    assert caught.value.exit_code == 15 and dev in str(caught.value)


def test_the_device_sink_writes_every_byte_in_blocks(tmp_path: Path) -> None:
    """On a regular file (no BLKZEROOUT, no block size: the ioctls are refused) the sink still
    writes every byte of the disk — staged blocks with the writes and zeros between them,
    untouched blocks as zeros, an unaligned end — and refuses writes that go backwards."""
    size = 3 * DEVICE_BLOCK + 4097
    path = tmp_path / "f"
    path.write_bytes(OLD * (size + 1000))
    rng = random.Random(9)
    writes = [
        (1000, rng.randbytes(5000)),
        (7000, rng.randbytes(DEVICE_BLOCK)),  # across the first block's end
        # the rest of block 1 and all of block 2: untouched, zeros
        (3 * DEVICE_BLOCK + 3, rng.randbytes(4000)),  # in the last, short block
    ]
    want = bytearray(size)
    fd = os.open(path, os.O_RDWR)
    try:
        sink = _DeviceSink(fd, size)
        for offset, data in writes:
            sink.write(offset, data)
            want[offset : offset + len(data)] = data
        with pytest.raises(ValueError, match="ascend"):
            sink.write(10, b"x")
        sink.close()
    finally:
        os.close(fd)
    assert path.read_bytes() == bytes(want) + OLD * 1000


def test_a_disk_streamed_to_standard_output(point: dict[str, Any]) -> None:
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=point["repo"])
    proc = subprocess.run([*VMKEEP, "restore", "image", point["id"][:12], "--to", "-"],
                          capture_output=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == point["bytes"]  # zeros included, in order
    assert b"to standard output" in proc.stderr


def test_a_reader_that_goes_away_is_one_line_exit_15(point: dict[str, Any]) -> None:
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=point["repo"])
    writer = subprocess.Popen([*VMKEEP, "restore", "image", point["id"][:12], "--to", "-"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert writer.stdout is not None and writer.stderr is not None
    assert writer.stdout.read(1000) == point["bytes"][:1000]
    writer.stdout.close()  # what `| head -c 1000` does
    err = writer.stderr.read().decode()
    assert "the reader went away" in one_line_error(writer.wait(), err)


@pytest.mark.parametrize("extra", [["--json"], ["--device"], ["--format", "vmdk"], ["--prefect"]])
def test_standard_output_takes_nothing_else(point: dict[str, Any], extra: list[str]) -> None:
    code, out, err = run_cli("restore", "image", point["id"][:12], "--to", "-", *extra,
                             repo=point["repo"])
    one_line_error(code, err, want=2)
    assert out == ""


@pytest.mark.parametrize(
    ("version", "password", "cdc"),
    [(4, "pw", True), (1, None, False), (5, "pw", True)],
    ids=["v4-encrypted", "v1-whole-frames", "v5-encrypted"],
)
def test_every_repository_format_restores_into_a_device(
    tmp_path: Path, loop_device: Any, version: int, password: str | None, cdc: bool
) -> None:
    """Versions 2-4 hash each recipe frame as it is written (the frame check beside the
    device's staged writes), version 1 stores frames whole, and encrypted repositories decrypt
    on the way: each gives the disk back byte for byte."""
    data = disk_bytes()
    image = tmp_path / "disk.img"
    image.write_bytes(data)
    kw: dict[str, Any] = {} if cdc else {"image_cdc": None}
    repo = Repository.init(str(tmp_path / "repo"), password=password,
                           version=None if version in (1, 5) else version, **kw)
    assert repo.config.version == version
    restore_point, _ = backup(repo, image, name="v")
    dev = loop_device(len(data) + (-len(data) % 4096))
    fresh = Repository.open(str(tmp_path / "repo"), password=password)
    assert restore_disk_to_device(fresh, fresh.load_point(restore_point.id), 0, dev) == len(data)
    assert read_device(dev, len(data)) == data
