"""NTFS files whose content is not in their own data stream — Windows Data Deduplication, WOF
compression (CompactOS), storage managers, cloud placeholders not downloaded — keep only zeros
there (a sparse stream of the file's size), and EFS-encrypted files keep ciphertext.  Reading one
is a typed error saying why, never a file of zeros or noise; a restore of the folder restores the
rest and reports each such file.  Made by ntfs-3g: the reparse points through its
``system.ntfs_reparse_data`` attribute, as Windows writes them (tag, length, data); the EFS flag
set in the record itself (ntfs-3g ignores it).  Files NTFS compresses itself (LZNT1, a folder
marked compressed, as Explorer's "Compress contents to save disk space" does) are in their own
stream and read decompressed."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from tests.restore.restore_helpers import run_cli
from vmkeep.disks.errors import FsContentElsewhereError
from vmkeep.disks.fs import open_filesystem
from vmkeep.disks.safe_restore import restore
from vmkeep.storage.repository import Repository

MiB = b.MiB
WOF_FILE_PROVIDER_XPRESS4K = struct.pack("<IIIII", 1, 2, 1, 0, 0)[:16]  # WOF v1, file; v1, alg 0
#: name → (reparse tag, its data, the file's size, the error's words)
ELSEWHERE = {
    "dedup.vhdx": (0x80000013, bytes(40), 3 * MiB, "Data Deduplication chunk store"),
    "kernel32.dll": (0x80000017, WOF_FILE_PROVIDER_XPRESS4K, 700_000, r"WOF: CompactOS"),
    "archived.pst": (0xC0000004, bytes(16), 200_000, r"storage manager \(HSM\)"),
    "placeholder.docx": (0x9000601A, bytes(8), 150_000, "cloud placeholder"),
}
HYDRATED = b"a OneDrive file that is downloaded\n" * 3000
#: compressible text, and a file of compression units stored three ways: raw (incompressible),
#: sparse (zeros) and LZNT1-compressed
TEXT = b"".join(b"line %06d of a log that compresses well\n" % i for i in range(40_000))
MIXED = os.urandom(100_000) + bytes(300_000) + TEXT[:200_000] + os.urandom(5_000)
#: a file extended by SetEndOfFile: valid up to VALID; its clusters beyond hold old bytes
STALE, VALID = bytes(range(256)) * 400, 10_000


def _reparse(tag: int, data: bytes) -> bytes:
    return struct.pack("<IHH", tag, len(data), 0) + data


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    b._need(["mkntfs", "ntfs-3g", "fusermount3"])
    tmp = tmp_path_factory.mktemp("ntfs-elsewhere")
    img, mnt = tmp / "ntfs.img", tmp / "mnt"
    with open(img, "wb") as f:
        f.truncate(32 * MiB)
    b.run("mkntfs", "-q", "-F", "-Q", img)
    mnt.mkdir()
    b.run("ntfs-3g", "-o", "compression", img, mnt)
    try:
        packed = mnt / "Compressed"
        packed.mkdir()
        os.setxattr(packed, "system.ntfs_attrib_be", (0x810).to_bytes(4, "big"))  # COMPRESSED
        (packed / "log.txt").write_bytes(TEXT)
        (packed / "mixed.bin").write_bytes(MIXED)
        data = mnt / "Users" / "ann"
        data.mkdir(parents=True)
        (data / "report.txt").write_text("kept\n")
        with open(data / "holes.bin", "wb") as f:  # sparse, no reparse point: zeros are right
            f.truncate(MiB)
        for name, (tag, payload, size, _why) in ELSEWHERE.items():
            with open(data / name, "wb") as f:
                f.truncate(size)
            if tag == 0x80000017:
                os.setxattr(data / name, "user.WofCompressedData", os.urandom(60_000))
            os.setxattr(data / name, "system.ntfs_reparse_data", _reparse(tag, payload))
        (data / "downloaded.docx").write_bytes(HYDRATED)  # a cloud file, hydrated
        os.setxattr(data / "downloaded.docx", "system.ntfs_reparse_data",
                    _reparse(0x9000601A, bytes(8)))
        (data / "efs.txt").write_bytes(b"\x9c\x11 EFS ciphertext" * 100)
        (data / "extended.db").write_bytes(STALE)
    finally:
        b.run("fusermount3", "-u", mnt)
    _mark_encrypted(img, "/Users/ann/efs.txt")  # ntfs-3g ignores the attribute
    _set_valid_data_length(img, "/Users/ann/extended.db", VALID)  # ntfs-3g keeps it whole
    return img


def _record_at(img: Path, path: str) -> int:
    """Where the file's MFT record lies in the image (mkntfs's 1 KiB records)."""
    with open(img, "rb") as fh:
        fs = open_filesystem(fh, "v")
        segment = fs.stat(path).inode
        ntfs = fs.fs  # type: ignore[attr-defined]
        [(lcn, _count), *_] = ntfs.mft.get(0).dataruns()
        return int(lcn * ntfs.cluster_size + segment * 1024)


def _patch_attribute(img: Path, path: str, kind: int, change) -> None:  # type: ignore[no-untyped-def]
    """``change(record, attribute offset)`` on the file's first attribute of type ``kind``, in
    the record's first sector (its update-sequence fixups are not touched)."""
    at = _record_at(img, path)
    with open(img, "r+b") as f:
        f.seek(at)
        record = bytearray(f.read(512))
        attr = struct.unpack_from("<H", record, 0x14)[0]
        while struct.unpack_from("<I", record, attr)[0] != kind:
            attr += struct.unpack_from("<I", record, attr + 4)[0]
        change(record, attr)
        f.seek(at)
        f.write(record)


def _set_valid_data_length(img: Path, path: str, valid: int) -> None:
    """As SetEndOfFile leaves a file Windows extended: its ``ValidDataLength`` short of its size
    (the non-resident header's field at 0x38)."""
    _patch_attribute(img, path, 0x80, lambda r, a: struct.pack_into("<q", r, a + 0x38, valid))


def _mark_encrypted(img: Path, path: str) -> None:
    """Set FILE_ATTRIBUTE_ENCRYPTED in the file's $STANDARD_INFORMATION, as EFS does."""

    def encrypted(record: bytearray, attr: int) -> None:
        value = attr + struct.unpack_from("<H", record, attr + 0x14)[0]
        flags = struct.unpack_from("<I", record, value + 0x20)[0]
        struct.pack_into("<I", record, value + 0x20, flags | 0x4000)

    _patch_attribute(img, path, 0x10, encrypted)


@pytest.mark.parametrize("name", sorted(ELSEWHERE))
def test_a_file_whose_content_is_elsewhere_is_an_error_not_zeros(volume: Path,
                                                                  name: str) -> None:
    _tag, _payload, size, why = ELSEWHERE[name]
    with open(volume, "rb") as fh:
        fs = open_filesystem(fh, "v")
        assert fs.stat(f"/Users/ann/{name}").size == size  # listed as it is
        assert re.search(why, fs.stat(f"/Users/ann/{name}").elsewhere)  # and marked
        with pytest.raises(FsContentElsewhereError, match=f"/Users/ann/{name}: .*{why}"):
            fs.open(f"/Users/ann/{name}")


def test_a_file_encrypted_with_efs_is_an_error_not_ciphertext(volume: Path) -> None:
    with open(volume, "rb") as fh:
        fs = open_filesystem(fh, "v")
        with pytest.raises(FsContentElsewhereError,
                           match=r"/Users/ann/efs\.txt: .*encrypted with EFS"):
            fs.open("/Users/ann/efs.txt")


def test_bytes_past_the_valid_data_length_read_as_zeros(volume: Path) -> None:
    with open(volume, "rb") as fh:
        fs = open_filesystem(fh, "v")
        assert fs.stat("/Users/ann/extended.db").size == len(STALE)
        with fs.open("/Users/ann/extended.db") as f:
            assert f.read() == STALE[:VALID] + bytes(len(STALE) - VALID)
        with fs.open("/Users/ann/extended.db") as f:  # random access too
            f.seek(VALID - 6)
            assert f.read(12) == STALE[VALID - 6:VALID] + bytes(6)


def test_sparse_files_and_downloaded_cloud_files_read_as_they_are(volume: Path) -> None:
    with open(volume, "rb") as fh:
        fs = open_filesystem(fh, "v")
        with fs.open("/Users/ann/holes.bin") as f:
            assert f.read() == bytes(MiB)
        with fs.open("/Users/ann/downloaded.docx") as f:
            assert f.read() == HYDRATED


def test_files_ntfs_compressed_read_decompressed(volume: Path) -> None:
    with open(volume, "rb") as fh:
        fs = open_filesystem(fh, "v")
        for name, content in (("log.txt", TEXT), ("mixed.bin", MIXED)):
            record = fs.fs.mft.get(fs.stat(f"/Compressed/{name}").inode)  # type: ignore[attr-defined]
            assert record.attributes[0x80][0].header.compression_unit == 4  # LZNT1, 16 clusters
            with fs.open(f"/Compressed/{name}") as f:
                assert f.read() == content
            with fs.open(f"/Compressed/{name}") as f:  # random access, across compression units
                f.seek(95_000)
                assert f.read(120_000) == content[95_000:215_000]


def test_a_restore_brings_back_the_rest_and_names_each_such_file(volume: Path,
                                                                  tmp_path: Path) -> None:
    with open(volume, "rb") as fh:
        summary = restore(open_filesystem(fh, "v"), tmp_path, "/Users")
    assert sorted(os.listdir(tmp_path / "ann")) == ["downloaded.docx", "extended.db", "holes.bin",
                                                    "report.txt"]
    assert sorted((w.path, w.reason) for w in summary.skipped) == [
        (f"/Users/ann/{name}", "read-error") for name in sorted([*ELSEWHERE, "efs.txt"])]


def test_restore_files_through_the_cli_reports_them_and_exits_3(volume: Path,
                                                               tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    Repository.init(str(repo))
    code, _out, err = run_cli("backup", "image", str(volume), "--name", "win", repo=repo)
    assert code == 0, err
    code, out, err = run_cli("restore", "files", "win@latest:whole/Users", "--to",
                             str(tmp_path / "out"), "--json", repo=repo)
    assert code == 3, err
    summary = json.loads(out)
    assert summary["errors"] == len(ELSEWHERE) + 1 and summary["files"] == 4
    reported = {w["path"]: w for w in summary["skipped"]}
    assert sorted(reported) == sorted(f"/Users/ann/{name}" for name in [*ELSEWHERE, "efs.txt"])
    assert "Data Deduplication chunk store" in json.dumps(reported)
    assert not (tmp_path / "out" / "ann" / "dedup.vhdx").exists()
    code, out, err = run_cli("ls", "win@latest:whole/Users/ann", "--json", repo=repo)
    assert code == 0, err
    marked = {e["name"]: e["elsewhere"] for e in json.loads(out)["entries"]}
    assert marked["report.txt"] is None and marked["downloaded.docx"] is None
    assert "Data Deduplication chunk store" in marked["dedup.vhdx"]
    assert "encrypted with EFS" in marked["efs.txt"]
    code, out, err = run_cli("ls", "win@latest:whole/Users/ann", repo=repo)
    assert code == 0, err
    lines = {line.split()[-1] if "(" not in line else line.split("  (")[0].split()[-1]: line
             for line in out.splitlines()}
    assert "(file restore cannot read it: it is a cloud placeholder" in lines["placeholder.docx"]
    assert "(" not in lines["report.txt"]
    shutil.rmtree(tmp_path / "out")
