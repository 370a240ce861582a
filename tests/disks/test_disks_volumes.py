"""list_volumes over GPT, MBR, LVM2 and bare file systems made by the real mkfs tools."""

from __future__ import annotations

import contextlib
import io
import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.disks import disk_builders as b
from vmkeep.disks.errors import VolumeError
from vmkeep.disks.magic import identify
from vmkeep.disks.vmdk.opener import open_disk
from vmkeep.disks.volumes import list_volumes

M = b.MiB


def _table(vols):
    return [(v.name, v.offset, v.size, v.fs, v.kind) for v in vols]


def test_gpt_with_lvm(disks):
    with open_disk(disks.gpt) as d:
        vols = list_volumes(d, "gpt")
        assert vols.warnings == []
        assert _table(vols) == [
            ("p1", 1 * M, 16 * M, "ext", "partition"),  # GPT's last LBA is inclusive
            ("p2", 17 * M, 300 * M, "xfs", "partition"),
            ("p3", 317 * M, 64 * M, "lvm2", "partition"),
            ("vg0/lvext", disks.lvm_lvext_offset, 16 * M, "ext", "lvm"),
            ("vg0/lvfat", disks.lvm_lvext_offset + 16 * M, 36 * M, "fat", "lvm"),
        ]
        assert vols[0].label == "root"
        # a volume stream reads exactly its byte range of the disk
        lv = vols[3].open()
        lv.seek(1024)
        via_lv = lv.read(4096)
        d.seek(disks.lvm_lvext_offset + 1024)
        assert via_lv == d.read(4096) and via_lv[56:58] == b"\x53\xef"  # ext superblock


def test_same_volumes_through_vmdk(disks):
    with open_disk(disks.gpt) as raw, open_disk(disks.vmdk_stream) as vmdk:
        assert _table(list_volumes(raw)) == _table(list_volumes(vmdk))


def test_mbr(disks):
    with open_disk(disks.mbr) as d:
        got = _table(list_volumes(d))
    assert got[:2] == [
        ("p1", 1 * M, 24 * M, "ntfs", "partition"),
        ("p2", 25 * M, 40 * M, "fat", "partition"),
    ]
    assert got[2][:3] == ("p3", 65 * M, 16 * M)  # exFAT when exfatprogs is installed


def test_bare_filesystem(disks):
    with open_disk(disks.btrfs) as d:
        assert _table(list_volumes(d)) == [("whole", 0, 128 * M, "btrfs", "whole")]


def test_empty_and_tiny_disks():
    assert list_volumes(io.BytesIO(bytes(4 * M))) == []
    assert list_volumes(io.BytesIO(b"")) == []
    assert identify(io.BytesIO(b"\x55\xaa")) is None


def _gpt_disk(tmp_path):
    disk = b.new_disk(tmp_path / "d.img", 4 * M)
    b.write_gpt(disk, [(b.LINUX_FS, 2048, 4095, "x"), (b.BASIC_DATA, 4096, 6143, "y")])
    return disk


def _poke(disk, at, data):
    with open(disk, "r+b") as f:
        f.seek(at)
        f.write(data)


def test_implausible_gpt_is_a_typed_error(tmp_path):
    """Primary and backup GPT both damaged, the primary's entry count implausible."""
    disk = _gpt_disk(tmp_path)
    _poke(disk, 512 + 80, struct.pack("<I", 0xFFFFFFF0))
    _poke(disk, 4 * M - 512, b"NOT PART")  # the backup header
    with open_disk(disk) as d, pytest.raises(VolumeError):
        list_volumes(d)


@pytest.mark.parametrize("damage", ["header", "entries"])
def test_a_damaged_primary_gpt_is_read_from_its_backup(tmp_path, damage):
    """As the kernel and gdisk do: the primary GPT fails its CRC32, the backup at the disk's end
    holds; the partitions come from the backup, with a warning."""
    disk = _gpt_disk(tmp_path)
    with open_disk(disk) as d:
        whole = [(v.name, v.offset, v.size, v.label) for v in list_volumes(d)]
    assert [w[0] for w in whole] == ["p1", "p2"]
    # a guest tool wrote over the primary's header (its entry count) or over its entries
    _poke(disk, 512 + 80 if damage == "header" else 1024 + 32, b"\x07")
    with open_disk(disk) as d:
        vols = list_volumes(d)
    assert [(v.name, v.offset, v.size, v.label) for v in vols] == whole
    assert len(vols.warnings) == 1 and "read from the backup GPT" in vols.warnings[0]
    assert ("CRC mismatch" in vols.warnings[0]) if damage == "entries" else True


def test_a_gpt_damaged_in_both_copies_is_read_as_it_is_with_a_warning(tmp_path):
    """No valid backup (a disk grown until the guest moves it, or damaged too): the primary is
    parsed as before, and the warning says so."""
    disk = _gpt_disk(tmp_path)
    _poke(disk, 1024 + 2 * 128 + 32, b"\x01")  # a byte of the third (unused) primary entry
    _poke(disk, 4 * M - 512, b"NOT PART")
    with open_disk(disk) as d:
        vols = list_volumes(d)
    assert [v.name for v in vols] == ["p1", "p2"]
    assert len(vols.warnings) == 1 and "no valid backup GPT" in vols.warnings[0]


def test_partition_past_the_end_is_clipped_with_a_warning(tmp_path):
    disk = b.new_disk(tmp_path / "d.img", 4 * M)
    b.write_mbr(disk, [(0x83, 2048, 100_000), (0x83, 50_000, 10)])
    with open_disk(disk) as d:
        vols = list_volumes(d)
    assert [(v.name, v.size) for v in vols] == [("p1", 3 * M)]
    assert len(vols.warnings) == 2


@settings(max_examples=80, deadline=None)
@given(st.binary(min_size=0, max_size=4096), st.sampled_from([b"", b"\x55\xaa", b"EFI PART"]))
def test_garbage_never_raises_untyped(blob, magic):
    data = bytearray(blob.ljust(70 * 1024, b"\0"))
    data[510:512] = b"\x55\xaa"
    if magic == b"EFI PART":
        data[512:520] = magic
    data[446 + 4] = 0xEE if magic == b"EFI PART" else data[446 + 4]
    with contextlib.suppress(VolumeError):
        list_volumes(io.BytesIO(bytes(data)))


def test_mbr_logical_partitions_are_numbered_like_linux(disks, tmp_path):
    disk = b.new_disk(tmp_path / "ext.img", 64 * M)
    b.write_mbr(disk, [(0x83, 2048, 8 * 2048), (0x05, 17 * 2048, 40 * 2048)])
    b.write_ebr(disk, 17 * M, [(0x83, 2048, 16 * 2048), (0x05, 18 * 2048, 20 * 2048)])
    b.write_ebr(disk, 35 * M, [(0x0C, 2048, 8 * 2048)])
    fs = tmp_path / "ext4.fs"
    b.mkfs_ext4(disks.tree, fs, 16)
    b.place(disk, 18 * M, fs)
    with open_disk(disk) as d:
        got = [(v.name, v.offset, v.size, v.fs) for v in list_volumes(d)]
    assert got == [
        ("p1", 1 * M, 8 * M, None),
        ("p5", 18 * M, 16 * M, "ext"),
        ("p6", 36 * M, 8 * M, None),
    ]


def test_a_volume_group_made_by_lvm2(tmp_path):
    """A PV, VG and LVs made by lvm2 itself (not by our builder): its metadata area holds every
    version the tools wrote (seqno 4 after four changes), and an extended LV has two segments
    with another LV between them; each LV reads exactly what was written into its extents."""
    import json
    import shutil
    import subprocess

    from tests.missing import missing

    for tool in ("pvcreate", "losetup", "mkfs.ext4", "mkfs.vfat"):
        if shutil.which(tool) is None:
            missing(f"{tool} is not installed")
    system = tmp_path / "lvm"  # lvm.conf, backups and archives stay in here, not in /etc/lvm
    system.mkdir()
    env = dict(os.environ, LVM_SYSTEM_DIR=str(system), LVM_SUPPRESS_FD_WARNINGS="1")
    disk = b.new_disk(tmp_path / "pv.img", 160 * M)
    vg = f"vmkeeptest{os.getpid()}"

    def lvm(*args: str) -> str:
        # no device-mapper here: metadata only, nothing activated (--driverloaded n)
        return subprocess.run([*args, "--driverloaded", "n"], env=env, check=True,
                              capture_output=True, text=True).stdout

    loop = subprocess.run(["losetup", "-f", "--show", str(disk)], capture_output=True,
                          text=True)
    if loop.returncode != 0:
        missing(f"no loop device: {loop.stderr.strip()}")
    dev = loop.stdout.strip()
    try:
        lvm("pvcreate", "-q", dev)
        lvm("vgcreate", "-q", "-s", "4m", vg, dev)
        lvm("lvcreate", "-q", "-an", "-Zn", "-L", "40m", "-n", "root", vg)
        lvm("lvcreate", "-q", "-an", "-Zn", "-L", "40m", "-n", "data", vg)
        lvm("lvextend", "-q", "-L", "+20m", f"{vg}/root")  # a second segment, after data's
        report = json.loads(lvm("lvs", "--reportformat", "json", "-o",
                                "lv_name,seg_pe_ranges", vg))["report"][0]["lv"]
        pe_start = int(lvm("pvs", "--noheadings", "--units", "b", "--nosuffix", "-o",
                           "pe_start", dev).strip())
    finally:
        subprocess.run(["losetup", "-d", dev], check=False)
    extents: dict[str, list[tuple[int, int]]] = {}
    for row in report:  # "/dev/loop0:0-9"
        first, last = (int(n) for n in row["seg_pe_ranges"].rsplit(":", 1)[1].split("-"))
        extents.setdefault(row["lv_name"], []).append((first, last - first + 1))
    assert len(extents["root"]) == 2, extents

    src = tmp_path / "tree"
    b.make_tree(src, symlinks=False)
    fs = {"root": tmp_path / "root.fs", "data": tmp_path / "data.fs"}
    b.mkfs_ext4(src, fs["root"], size_mb=60)
    plain = tmp_path / "plain"  # FAT through mtools: ASCII names
    (plain / "srv").mkdir(parents=True)
    (plain / "srv" / "data.bin").write_bytes(os.urandom(300_000))
    b.mkfs_fat32(plain, fs["data"], size_mb=40)
    written = {name: path.read_bytes() for name, path in fs.items()}
    with open(disk, "r+b") as f:
        for name, segments in extents.items():
            pos = 0
            for first, count in sorted(segments):
                f.seek(pe_start + first * 4 * M)
                f.write(written[name][pos : pos + count * 4 * M])
                pos += count * 4 * M

    with open_disk(disk) as d:
        vols = list_volumes(d, "pv")
        assert vols.warnings == []
        found = {v.name: v for v in vols if v.kind == "lvm"}
        assert sorted(found) == [f"{vg}/data", f"{vg}/root"]
        assert (found[f"{vg}/root"].size, found[f"{vg}/root"].fs) == (60 * M, "ext")
        assert (found[f"{vg}/data"].size, found[f"{vg}/data"].fs) == (40 * M, "fat")
        assert found[f"{vg}/root"].offset is None  # two segments: no single disk offset
        for name in ("root", "data"):
            stream = found[f"{vg}/{name}"].open()
            assert stream.read() == written[name], name
