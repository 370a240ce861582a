"""`tape scan` on a real tgt VTL: the catalog-file fast path (tape format 2), its fallback to
reading a data file in full when the catalog file is damaged or missing, and version-1 tapes."""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.storage.storage_helpers import backup, restored_sha, sha, write_image
from tests.tape.vtl_helpers import configure
from vmkeep.lab import vtl as vtl_mod
from vmkeep.storage.repository import Repository
from vmkeep.tape import catalog
from vmkeep.tape import copy as copy_mod
from vmkeep.tape.copy import copy_points
from vmkeep.tape.label import Label
from vmkeep.tape.library import Library
from vmkeep.tape.restore import restore_point, scan
from vmkeep.tape.stream import Streaming


def _repo(tmp_path: Path, n: int, size: int) -> tuple[Repository, list[tuple[str, str]]]:
    repo = Repository.init(str(tmp_path / "repo"), pack_size=256 * 1024)
    points = []
    for i in range(n):
        img = write_image(tmp_path / f"d{i}.img", size=size, seed=30 + i)
        point, _ = backup(repo, img, name=f"img{i}")
        points.append((point.id, sha(img)))
    return repo, points


def _disaster_then_scan(
    lib: Library, tmp_path: Path, repo: Repository, points: list[tuple[str, str]]
) -> dict[str, Any]:
    """Delete the disk repository, scan into a new one, restore every point bit-identically."""
    written = sum(r.bytes for r in catalog.records(repo))
    shutil.rmtree(tmp_path / "repo")
    new = tmp_path / "rebuilt"
    found = scan(lib, str(new))
    assert set(found["points"]) == {p for p, _ in points}
    rebuilt = Repository.open(str(new))
    for pid, digest in points:
        restore_point(lib, str(new), pid, catalog_records=catalog.records(rebuilt))
        assert restored_sha(Repository.open(str(new)), pid, tmp_path) == digest
    found["written"] = written
    return found


def test_scan_reads_catalog_files_and_spaces_over_the_data(
    small_vtl: vtl_mod.Vtl, tmp_path: Path
) -> None:
    lib = configure(small_vtl)
    repo, points = _repo(tmp_path, n=3, size=4 * 1024 * 1024)
    copy_points(repo, lib, [p for p, _ in points[:2]], "weekly", block_size=64 * 1024,
                streaming=Streaming(depth=4))
    copy_points(repo, lib, [points[2][0]], "weekly", block_size=64 * 1024)  # appended
    files = catalog.records(repo)
    assert len({r.tape_id for r in files}) >= 2 and len(files) >= 3
    found = _disaster_then_scan(lib, tmp_path, repo, points)
    assert found["files"] == len(files)
    assert (found["from_catalog_files"], found["read_in_full"]) == (len(files), 0), found
    # the label, one block at the head of each data file and the catalog files: not the data
    assert found["bytes_read"] < found["written"] / 4, found
    lib.close()


def _corrupt_catalog_file(media: Path, tape: str, fileno: int) -> None:
    """Flip one byte of the JSON inside the catalog file of ``tape``'s data file ``fileno``
    (in the tgt cartridge image; the cartridge is in its slot)."""
    img = media / tape
    raw = bytearray(img.read_bytes())
    name = f".vmkeep-tape/{tape}-{fileno:05d}.catalog.json".encode()
    at = raw.index(name)
    body = raw.index(b'{"block_size"', at)
    digit = raw.index(b'"bytes": ', body) + len(b'"bytes": ')
    raw[digit] = ord("1") if raw[digit] != ord("1") else ord("2")
    img.write_bytes(bytes(raw))


def test_damaged_catalog_file_falls_back_to_reading_the_data(
    vtl: vtl_mod.Vtl, library: Library, tmp_path: Path
) -> None:
    repo, points = _repo(tmp_path, n=2, size=1024 * 1024)
    copy_points(repo, library, [points[0][0]], "daily")
    copy_points(repo, library, [points[1][0]], "daily")  # tape files 3 (data) and 4 (catalog)
    _corrupt_catalog_file(vtl.media_dir, "VMK001L6", 1)
    found = _disaster_then_scan(library, tmp_path, repo, points)
    assert (found["from_catalog_files"], found["read_in_full"]) == (1, 1), found
    assert any("file 1" in w for w in found["warnings"]), found["warnings"]


def test_missing_catalog_file_falls_back(
    library: Library, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job that stopped between a data file's filemark and its catalog file."""
    repo, points = _repo(tmp_path, n=1, size=1024 * 1024)
    monkeypatch.setattr(copy_mod.catalog_file, "write", lambda *a, **k: False)
    copy_points(repo, library, [points[0][0]], "daily")
    found = _disaster_then_scan(library, tmp_path, repo, points)
    assert (found["from_catalog_files"], found["read_in_full"]) == (0, 1), found


def test_version_1_tapes_still_scan(
    library: Library, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cartridges written before catalog files (label version 1): every data file is read."""
    repo, points = _repo(tmp_path, n=2, size=1024 * 1024)
    monkeypatch.setattr(copy_mod, "Label", functools.partial(Label, version=1))
    copy_points(repo, library, [points[0][0]], "daily")
    r2 = copy_points(repo, library, [points[1][0]], "daily")  # appended: still version 1
    assert r2.files[0]["file"] == 2  # no catalog file in between
    found = _disaster_then_scan(library, tmp_path, repo, points)
    assert (found["from_catalog_files"], found["read_in_full"]) == (0, 2), found


def test_version_2_tapes_keep_blake3_records_and_still_scan_and_restore(
    library: Library, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cartridge labelled version 2 (before XXH3 records), appended to, keeps BLAKE3
    records on every member: its catalog entries are ``b3``; scan and restores still work."""
    repo, points = _repo(tmp_path, n=2, size=1024 * 1024)
    monkeypatch.setattr(copy_mod, "Label", functools.partial(Label, version=2))
    copy_points(repo, library, [points[0][0]], "daily")
    monkeypatch.setattr(copy_mod, "Label", Label)  # new labels would be version 3
    r2 = copy_points(repo, library, [points[1][0]], "daily")  # appended: still version 2
    assert r2.files[0]["file"] == 3
    records = catalog.records(repo)
    assert len({r.tape_id for r in records}) == 1
    entries = [e for r in records for k, e in r.objects.items() if k.startswith("packs/")]
    assert entries and all("b3" in e and "xxh3" not in e for e in entries)
    found = _disaster_then_scan(library, tmp_path, repo, points)
    assert (found["from_catalog_files"], found["read_in_full"]) == (2, 0), found


def test_catalog_file_is_a_pax_archive_tar_lists(
    vtl: vtl_mod.Vtl, library: Library, tmp_path: Path
) -> None:
    from vmkeep.tape.restore import mount
    from vmkeep.tape.stream import BlockReader

    repo, [(pid, _)] = _repo(tmp_path, n=1, size=1024 * 1024)
    copy_points(repo, library, [pid], "daily", block_size=256 * 1024)
    with library.drive_lock(0) as di:
        drive = library.open_drive(di)
        label = mount(library, di, drive, "VMK001L6")
        assert label.version == 3
        drive.goto_file(2)
        raw = BlockReader(drive, label.block_size).read()
        library.unload(di)
        drive.close()
    stream = tmp_path / "file2.tar"
    stream.write_bytes(raw)
    listed = subprocess.run(["tar", "-tf", str(stream)], capture_output=True, text=True,
                            check=True).stdout.split()
    assert listed == [".vmkeep-tape/VMK001L6-00001.catalog.json"]


def test_no_room_for_the_catalog_file_marks_the_cartridge_full(
    library: Library, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drive that overflows on the catalog file (real drives; tgt never overflows): the
    data file stays catalogued, the cartridge is full, scan reads the data file."""
    from vmkeep.scsi.errors import check_condition
    from vmkeep.scsi.sense import VOLUME_OVERFLOW, decode_sense, fixed_sense

    def overflow(*_a: object, **_k: object) -> bool:
        raise check_condition("fake", decode_sense(fixed_sense(VOLUME_OVERFLOW, 0, 2, eom=True)))

    repo, points = _repo(tmp_path, n=1, size=1024 * 1024)
    monkeypatch.setattr(copy_mod.catalog_file, "write", overflow)
    report = copy_points(repo, library, [points[0][0]], "daily")
    assert any("no room for the catalog file" in w for w in report.warnings)
    assert library.media()[report.cartridges[0]].full
    found = _disaster_then_scan(library, tmp_path, repo, points)
    assert (found["from_catalog_files"], found["read_in_full"]) == (0, 1), found
