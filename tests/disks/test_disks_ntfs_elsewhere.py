"""NTFS files whose content is not in their own data stream — Windows Data Deduplication, WOF
compression with LZX, storage managers, cloud placeholders not downloaded — keep only zeros
there (a sparse stream of the file's size), and EFS-encrypted files keep ciphertext.  Reading one
is a typed error saying why, never a file of zeros or noise; a restore of the folder restores the
rest and reports each such file.  Made by ntfs-3g: the reparse points through its
``system.ntfs_reparse_data`` attribute, as Windows writes them (tag, length, data); the EFS flag
set in the record itself (ntfs-3g ignores it).  Files NTFS compresses itself (LZNT1, a folder
marked compressed, as Explorer's "Compress contents to save disk space" does) are in their own
stream and read decompressed; so are files WOF compressed with XPRESS (CompactOS), whose chunks
— made here by wimlib, a WIM resource being the same chunk table and chunks — are in their
``WofCompressedData`` stream."""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from tests.missing import missing
from tests.restore.restore_helpers import run_cli
from vmkeep.disks.errors import DiskError, FsContentElsewhereError, FsDamagedError
from vmkeep.disks.fs import open_filesystem, wimlib
from vmkeep.disks.safe_restore import restore
from vmkeep.storage.repository import Repository

MiB = b.MiB
#: WOF_EXTERNAL_INFO (v1, file provider) + FILE_PROVIDER_EXTERNAL_INFO_V1 (v1, algorithm, flags)
def _wof_point(algorithm: int) -> bytes:
    return struct.pack("<IIIII", 1, 2, 1, algorithm, 0)


#: name → (reparse tag, its data, the file's size, the error's words)
ELSEWHERE = {
    "dedup.vhdx": (0x80000013, bytes(40), 3 * MiB, "Data Deduplication chunk store"),
    # WIMBoot: WOF's WIM provider (1), its content in a WIM file outside the volume
    "kernel32.dll": (0x80000017, struct.pack("<IIII", 1, 1, 1, 0) + bytes(28), 700_000,
                     r"WOF\) .*WIMBoot"),
    "archived.pst": (0xC0000004, bytes(16), 200_000, r"storage manager \(HSM\)"),
    "placeholder.docx": (0x9000601A, bytes(8), 150_000, "cloud placeholder"),
}
HYDRATED = b"a OneDrive file that is downloaded\n" * 3000
#: files CompactOS compressed (WOF, XPRESS): name → (algorithm, chunk size); their chunks made
#: by wimlib (a WIM resource is the same chunk table and chunks), content from all kinds of data:
#: text (short matches), a long run of zeros (long and overlapping matches, the 16-bit length
#: form), random bytes (chunks stored as they are), a last chunk cut short
COMPACT = {"compact4k.dll": (0, 4096), "compact8k.exe": (2, 8192), "compact16k.sys": (3, 16384),
           "compactlzx.dll": (1, 32768)}  # LZX (compact /exe:lzx): decoded by wimlib
WINDOWS_FILE = (b"".join(b"MZ header %05d, a Windows system file\r\n" % i for i in range(3000))
                + bytes(70_000) + os.urandom(20_000) + b"tail" * 1234)
#: compressible text, and a file of compression units stored three ways: raw (incompressible),
#: sparse (zeros) and LZNT1-compressed
TEXT = b"".join(b"line %06d of a log that compresses well\n" % i for i in range(40_000))
MIXED = os.urandom(100_000) + bytes(300_000) + TEXT[:200_000] + os.urandom(5_000)
#: files whose last compression unit compresses into exactly the bytes the file has left (one
#: cluster for 4 KiB, two for 8 KiB): dissect.ntfs took such a unit for stored data
FOUR_K = TEXT[:4096]
EIGHT_K = os.urandom(4_500) + TEXT[:3_692]
#: a file extended by SetEndOfFile: valid up to VALID; its clusters beyond hold old bytes
STALE, VALID = bytes(range(256)) * 400, 10_000


def _reparse(tag: int, data: bytes) -> bytes:
    return struct.pack("<IHH", tag, len(data), 0) + data


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    b._need(["mkntfs", "ntfs-3g", "fusermount3", "wimcapture"])
    tmp = tmp_path_factory.mktemp("ntfs-elsewhere")
    compact = {name: _wim_resource(tmp / name, WINDOWS_FILE, chunk,
                                   "LZX" if algorithm == 1 else "XPRESS")
               for name, (algorithm, chunk) in COMPACT.items()}
    img, mnt = tmp / "ntfs.img", tmp / "mnt"
    with open(img, "wb") as f:
        f.truncate(32 * MiB)
    b.run("mkntfs", "-q", "-F", "-Q", img)
    mnt.mkdir()
    b.run("ntfs-3g", "-o", "compression", img, mnt)
    try:
        system32 = mnt / "Windows" / "System32"
        system32.mkdir(parents=True)
        for name, (algorithm, _chunk) in COMPACT.items():
            _compact(system32 / name, len(WINDOWS_FILE), compact[name], algorithm)
        _compact(system32 / "broken.dll", len(WINDOWS_FILE), os.urandom(30_000), 0)
        _compact(system32 / "brokenlzx.dll", len(WINDOWS_FILE), os.urandom(40_000), 1)
        packed = mnt / "Compressed"
        packed.mkdir()
        os.setxattr(packed, "system.ntfs_attrib_be", (0x810).to_bytes(4, "big"))  # COMPRESSED
        (packed / "log.txt").write_bytes(TEXT)
        (packed / "mixed.bin").write_bytes(MIXED)
        (packed / "four-k.txt").write_bytes(FOUR_K)
        (packed / "eight-k.bin").write_bytes(EIGHT_K)
        data = mnt / "Users" / "ann"
        data.mkdir(parents=True)
        (data / "report.txt").write_text("kept\n")
        with open(data / "holes.bin", "wb") as f:  # sparse, no reparse point: zeros are right
            f.truncate(MiB)
        for name, (tag, payload, size, _why) in ELSEWHERE.items():
            with open(data / name, "wb") as f:
                f.truncate(size)
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


def _compact(path: Path, size: int, stream: bytes, algorithm: int) -> None:
    """As WOF leaves a compressed file: its data stream sparse, of the file's size; the chunks
    in ``WofCompressedData``; the reparse point naming the algorithm."""
    with open(path, "wb") as f:
        f.truncate(size)
    os.setxattr(path, "user.WofCompressedData", stream)  # ntfs-3g: a named data stream
    os.setxattr(path, "system.ntfs_reparse_data", _reparse(0x80000017, _wof_point(algorithm)))


def _wim_resource(work: Path, content: bytes, chunk: int, compression: str) -> bytes:
    """``content`` compressed by wimlib (``compression``, ``chunk``-byte chunks): its resource
    in the WIM — chunk table and chunks, as WOF stores them."""
    (work / "src").mkdir(parents=True)
    (work / "src" / "file").write_bytes(content)
    b.run("wimcapture", work / "src", work / "x.wim", f"--compress={compression}",
          f"--chunk-size={chunk}")
    wim = (work / "x.wim").read_bytes()
    assert wim[:8] == b"MSWIM\0\0\0" and struct.unpack_from("<I", wim, 20)[0] == chunk

    def reshdr(data: bytes, at: int) -> tuple[int, int, int, int]:
        """(size in the WIM, flags, offset, original size) of a resource header."""
        offset, original = struct.unpack_from("<QQ", data, at + 8)
        return int.from_bytes(data[at:at + 7], "little"), data[at + 7], offset, original

    size, _flags, offset, _ = reshdr(wim, 48)  # the blob table, 50-byte entries
    table = wim[offset:offset + size]
    for at in range(0, len(table), 50):
        size, flags, offset, original = reshdr(table, at)
        if original == len(content) and flags & 0x04:  # compressed, not metadata
            return wim[offset:offset + size]
    raise AssertionError("no compressed resource of the file's size in the WIM")


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


@pytest.mark.parametrize("decoder", ["wimlib", "python"])
def test_files_compactos_compressed_read_decompressed(volume: Path, decoder: str,
                                                      monkeypatch) -> None:
    """By wimlib where it is installed; without it, XPRESS by vmkeep's own decoder."""
    if decoder == "python":
        monkeypatch.setattr(wimlib, "_library", lambda: None)
    elif not wimlib.available():
        missing("wimlib (libwim15) is not installed")
    with open(volume, "rb") as fh:
        fs = open_filesystem(fh, "v")
        for name in COMPACT:
            if decoder == "python" and COMPACT[name][0] == 1:
                continue  # LZX: wimlib only (test_an_lzx_file_without_wimlib_says_…)
            entry = fs.stat(f"/Windows/System32/{name}")
            assert (entry.size, entry.elsewhere, entry.streams) == (len(WINDOWS_FILE), "", ())
            with fs.open(f"/Windows/System32/{name}") as f:
                assert f.read() == WINDOWS_FILE, name
            with fs.open(f"/Windows/System32/{name}") as f:  # random access, across chunks
                f.seek(116_000)
                assert f.read(30_000) == WINDOWS_FILE[116_000:146_000], name


@pytest.mark.parametrize(("name", "decoder"), [("broken.dll", "wimlib"), ("broken.dll", "python"),
                                               ("brokenlzx.dll", "wimlib")])
def test_a_compactos_file_whose_chunks_do_not_decode_is_damaged(volume: Path, name: str,
                                                                decoder: str,
                                                                monkeypatch) -> None:
    if decoder == "python":
        monkeypatch.setattr(wimlib, "_library", lambda: None)
    with open(volume, "rb") as fh:
        fs = open_filesystem(fh, "v")
        with pytest.raises(FsDamagedError, match=rf"{name}: its WOF-compressed data"):
            fs.open(f"/Windows/System32/{name}").read()


def test_an_lzx_file_without_wimlib_says_what_to_install(volume: Path, monkeypatch) -> None:
    monkeypatch.setattr(wimlib, "_library", lambda: None)
    with open(volume, "rb") as fh:
        fs = open_filesystem(fh, "v")
        entry = fs.stat("/Windows/System32/compactlzx.dll")
        assert re.search(r"WOF: LZX.*install libwim15", entry.elsewhere), entry.elsewhere
        assert entry.streams == ("WofCompressedData",)  # its own data, listed as a stream
        with pytest.raises(FsContentElsewhereError, match=r"compactlzx\.dll: .*libwim15"):
            fs.open("/Windows/System32/compactlzx.dll")


def test_files_ntfs_compressed_read_decompressed(volume: Path) -> None:
    with open(volume, "rb") as fh:
        fs = open_filesystem(fh, "v")
        for name, content in (("log.txt", TEXT), ("mixed.bin", MIXED), ("four-k.txt", FOUR_K),
                              ("eight-k.bin", EIGHT_K)):
            record = fs.fs.mft.get(fs.stat(f"/Compressed/{name}").inode)  # type: ignore[attr-defined]
            assert record.attributes[0x80][0].header.compression_unit == 4  # LZNT1, 16 clusters
            with fs.open(f"/Compressed/{name}") as f:
                assert f.read() == content
            with fs.open(f"/Compressed/{name}") as f:  # random access, across compression units
                f.seek(95_000)
                assert f.read(120_000) == content[95_000:215_000]


def test_files_ntfs_compressed_restore_whole(volume: Path, tmp_path: Path) -> None:
    """A restore writes what a read gives: each compressed unit's sparse tail (where its
    compressed clusters end) is not a hole — it was, and restored files had zeros there."""
    with open(volume, "rb") as fh:
        summary = restore(open_filesystem(fh, "v"), tmp_path, "/Compressed")
    assert summary.skipped == []
    assert (tmp_path / "log.txt").read_bytes() == TEXT
    assert (tmp_path / "mixed.bin").read_bytes() == MIXED
    assert (tmp_path / "four-k.txt").read_bytes() == FOUR_K
    assert (tmp_path / "eight-k.bin").read_bytes() == EIGHT_K


def test_a_damaged_compression_unit_is_an_error_never_a_file_cut_short(volume: Path,
                                                                         tmp_path: Path) -> None:
    """A compression unit that does not decode (its clusters overwritten) fails the read with a
    typed error naming the file; dissect.util's Python decoder returned nothing for it, and the
    file read back 64 KiB short — the rest shifted — without a word."""
    damaged = tmp_path / "damaged.img"
    shutil.copyfile(volume, damaged)
    with open(damaged, "r+b") as fh:
        fs = open_filesystem(fh, "v")
        record = fs.fs.mft.get(fs.stat("/Compressed/log.txt").inode)  # type: ignore[attr-defined]
        lcn, count = record.attributes[0x80][0].dataruns()[0]  # the first unit's clusters
        assert lcn is not None and count < 16  # stored compressed
        fh.seek(lcn * fs.fs.cluster_size)  # type: ignore[attr-defined]
        fh.write(b"\xff" * 4096)
    with open(damaged, "rb") as fh:
        fs = open_filesystem(fh, "v")
        with fs.open("/Compressed/log.txt") as f:
            f.seek(65_536)
            assert f.read(65_536) == TEXT[65_536:131_072]  # the second unit is sound
            f.seek(0)
            with pytest.raises(DiskError, match=r"log\.txt"):
                f.read(65_536)
        (tmp_path / "out").mkdir()
        summary = restore(fs, tmp_path / "out", "/Compressed")
    assert [(w.path, w.reason) for w in summary.skipped] == [("/Compressed/log.txt",
                                                              "read-error")]
    assert (tmp_path / "out" / "mixed.bin").read_bytes() == MIXED


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
