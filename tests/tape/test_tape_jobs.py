"""Tape end to end on a real tgt VTL over libiscsi: label, copy, restore, span, scan."""

from __future__ import annotations

import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest
import xxhash

from tests.storage.storage_helpers import backup, restored_sha, sha, write_image
from tests.tape.vtl_helpers import configure
from vmkeep.storage.pack import MAGIC, MAGIC2, MAGIC3
from vmkeep.storage.repository import Repository
from vmkeep.tape import catalog
from vmkeep.tape.copy import copy_points
from vmkeep.tape.library import Library
from vmkeep.tape.restore import restore_point, scan
from vmkeep.tape.stream import DEFAULT_OUTSTANDING, Streaming


def _repo(tmp_path: Path, n: int = 1, size: int = 3 * 1024 * 1024, **kw):  # type: ignore[no-untyped-def]
    repo = Repository.init(str(tmp_path / "repo"), pack_size=256 * 1024, **kw)
    points = []
    for i in range(n):
        img = write_image(tmp_path / f"d{i}.img", size=size, seed=10 + i)
        point, _ = backup(repo, img, name=f"img{i}")
        points.append((point.id, sha(img)))
    return repo, points


def test_inventory_lists_slots_drives_and_mail_slot(library: Library) -> None:
    inv = library.inventory()
    assert (inv["slots"], inv["drives"], inv["mail_slots"]) == (8, 2, 1)
    barcodes = [e["barcode"] for e in inv["elements"] if e["kind"] == "slot"]
    assert barcodes[0] == "VMK001L6" and len(barcodes) == 8


def test_copy_and_restore_bit_identical(library: Library, tmp_path: Path) -> None:
    repo, [(pid, digest)] = _repo(tmp_path)
    report = copy_points(repo, library, [pid], "daily")
    assert report.cartridges == ["VMK001L6"] and report.bytes > 0
    assert catalog.points_on_tape(repo) == {pid}
    # every cartridge is back in its slot, none in a drive
    assert all(not e["full"] for e in library.inventory()["elements"] if e["kind"] == "drive")
    out = tmp_path / "restored-repo"
    restore_point(library, str(out), pid[:12], catalog_records=catalog.records(repo))
    again = Repository.open(str(out))
    assert restored_sha(again, pid, tmp_path) == digest


def test_a_copy_to_an_undefined_pool_says_so(library: Library, tmp_path: Path) -> None:
    from vmkeep.tape.library import Pool, save_pool

    repo, [(p1, _), (p2, _)] = _repo(tmp_path, n=2, size=1024 * 1024)
    first = copy_points(repo, library, [p1], "monthly")
    assert any("pool monthly is not defined" in w and "7 days" in w for w in first.warnings)
    save_pool(Pool("monthly", retention_days=400, append=False))
    assert not copy_points(repo, library, [p2], "monthly").warnings


def test_second_copy_appends_to_the_pool_cartridge(library: Library, tmp_path: Path) -> None:
    repo, [(p1, _), (p2, d2)] = _repo(tmp_path, n=2, size=1024 * 1024)
    copy_points(repo, library, [p1], "daily")
    r2 = copy_points(repo, library, [p2], "daily")
    # tape file 1: the first copy, 2: its catalog file (format 2), 3: this copy
    assert r2.files == [{"tape": "VMK001L6", "file": 3, "bytes": r2.bytes,
                         "objects": r2.files[0]["objects"], "complete": True}]
    out = tmp_path / "r2"
    restore_point(library, str(out), p2, catalog_records=catalog.records(repo))
    assert restored_sha(Repository.open(str(out)), p2, tmp_path) == d2


def test_copy_spans_two_cartridges_and_scan_rebuilds_after_repo_loss(
    small_vtl, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    lib = configure(small_vtl)
    repo, points = _repo(tmp_path, n=2, size=5 * 1024 * 1024)
    report = copy_points(repo, lib, [p for p, _ in points], "weekly", block_size=64 * 1024,
                         streaming=Streaming(depth=4))
    assert len(report.cartridges) >= 2, report.to_json()
    recs = catalog.records(repo)
    for rec in recs:  # no object split: every object sits whole in exactly one file
        assert all(v["size"] > 0 for v in rec.objects.values())
    shutil.rmtree(tmp_path / "repo")  # the disaster
    new = tmp_path / "rebuilt"
    found = scan(lib, str(new))
    assert set(found["points"]) == {p for p, _ in points}
    rebuilt = Repository.open(str(new))
    for pid, digest in points:
        restore_point(lib, str(new), pid, catalog_records=catalog.records(rebuilt))
        assert restored_sha(Repository.open(str(new)), pid, tmp_path) == digest
    lib.close()


def test_raw_tape_file_is_a_pax_archive_gnu_tar_reads(library: Library, tmp_path: Path) -> None:
    repo, [(pid, _)] = _repo(tmp_path, size=1024 * 1024)
    copy_points(repo, library, [pid], "daily", block_size=256 * 1024)
    media = tmp_path / "vtl" / "media" / "VMK001L6"
    # read file 1 back as raw blocks through the drive, then hand the bytes to GNU tar
    from vmkeep.tape.restore import mount
    from vmkeep.tape.stream import BlockReader

    with library.drive_lock(0) as di:
        drive = library.open_drive(di)
        label = mount(library, di, drive, "VMK001L6")
        drive.goto_file(1)
        raw = BlockReader(drive, label.block_size).read()
        library.unload(di)
        drive.close()
    assert media.exists()
    stream = tmp_path / "file1.tar"
    stream.write_bytes(raw)
    names = subprocess.run(["tar", "-tf", str(stream)], capture_output=True, text=True, check=True)
    listed = names.stdout.split()
    assert "config" in listed and f"manifests/{pid}.parquet" in listed
    with tarfile.open(stream) as t:
        assert t.getmember("config").pax_headers["VMKEEP.b3"]
        packs = [m for m in t.getmembers() if m.name.startswith("packs/")]
        assert packs
        for m in packs:  # tape format 3: BLAKE3 (= name) for version-1 packs, XXH3-128 else
            f = t.extractfile(m)
            assert f is not None
            data = f.read()
            if data.startswith(MAGIC):
                assert m.pax_headers["VMKEEP.b3"] == m.name.rsplit("/", 1)[-1]
            else:
                assert data[:8] in (MAGIC2, MAGIC3)
                assert m.pax_headers["VMKEEP.xxh3"] == xxhash.xxh3_128_hexdigest(data)
                assert "VMKEEP.b3" not in m.pax_headers
    dest = tmp_path / "x"
    dest.mkdir()
    subprocess.run(["tar", "-xf", str(stream), "-C", str(dest)], check=True)
    assert Repository.open(str(dest)).load_point(pid).id == pid


def test_encrypted_repository_stays_encrypted(
    library: Library, tmp_path: Path, monkeypatch  # type: ignore[no-untyped-def]
) -> None:
    monkeypatch.setenv("VMKEEP_PASSWORD", "canary-secret-pw")
    repo, [(pid, digest)] = _repo(tmp_path, size=1024 * 1024, password="canary-secret-pw")
    copy_points(repo, library, [pid], "daily")
    raw = (tmp_path / "vtl" / "media" / "VMK001L6").read_bytes()
    assert b"the quick brown fox" not in raw  # image text never appears in clear on tape
    out = tmp_path / "enc-restored"
    restore_point(library, str(out), pid, catalog_records=catalog.records(repo))
    back = Repository.open(str(out), password="canary-secret-pw")
    assert restored_sha(back, pid, tmp_path) == digest
    # a scan with the wrong password fails and leaves no half-made repository behind; the
    # right one then works into the same folder
    from vmkeep.storage.errors import WrongPassword

    monkeypatch.setenv("VMKEEP_PASSWORD", "wrong")
    with pytest.raises(WrongPassword):
        scan(library, str(tmp_path / "scanned"))
    assert not any(p.is_file() for p in (tmp_path / "scanned").rglob("*"))
    monkeypatch.setenv("VMKEEP_PASSWORD", "canary-secret-pw")
    assert scan(library, str(tmp_path / "scanned"))["points"] == [pid]


def test_restore_image_streams_from_tape_incremental_and_encrypted(
    library: Library, tmp_path: Path, monkeypatch  # type: ignore[no-untyped-def]
) -> None:
    from tests.storage.storage_helpers import scribble
    from vmkeep.tape.image import restore_image_from_tape

    monkeypatch.setenv("VMKEEP_PASSWORD", "pw-stream")
    repo = Repository.init(str(tmp_path / "repo"), pack_size=256 * 1024, password="pw-stream")
    img = write_image(tmp_path / "d.img", size=6 * 1024 * 1024 + 777)
    first, _ = backup(repo, img)
    copy_points(repo, library, [first.id], "daily")
    scribble(img, [(3_000_000, 9000)])
    second, _ = backup(repo, img)
    copy_points(repo, library, [second.id], "daily")  # references the first file's packs
    out = tmp_path / "out"
    out.mkdir()
    result = restore_image_from_tape(library, catalog.records(repo), second.id[:8],
                                     out / "disk.img", password="pw-stream")
    assert sha(out / "disk.img") == sha(img)
    assert len(result["files"]) == 2 and [p.name for p in out.iterdir()] == ["disk.img"]


def test_cartridge_in_use_is_never_moved(library: Library) -> None:
    import pytest

    from vmkeep.tape.errors import CartridgeInUse

    other = Library(library.cfg)  # another job
    with other.cartridge_lock("VMK002L6"):
        with pytest.raises(CartridgeInUse):
            library.load("VMK002L6", 0)
        with pytest.raises(CartridgeInUse):
            library.cartridge_lock("VMK002L6").__enter__()
    library.load("VMK002L6", 0)
    opened = []
    real_open = library.open_drive
    library.open_drive = lambda i: opened.append(i) or real_open(i)  # type: ignore[method-assign]
    # a job writing to it: no UNLOAD, no move
    with other.cartridge_lock("VMK002L6"), pytest.raises(CartridgeInUse):
        library.unload(0)
    assert opened == []  # the drive was not told to unload (tgt's UNLOAD is a no-op: asked here)
    assert [e.barcode for e in library.drive_elements() if e.full] == ["VMK002L6"]
    assert library.unload(0) == "VMK002L6"
    other.close()


def test_drives_map_to_changer_elements(library: Library) -> None:
    # drive 0's element reports its serial; tgt truncates the last element's: order decides
    assert [library.drive_address(i) for i in (0, 1)] == [500, 501]


def test_pool_rules_append_then_empty_then_scratch_then_expired(
    library: Library, tape_dir: Path
) -> None:
    from datetime import UTC, datetime, timedelta

    import pytest

    from vmkeep import clock
    from vmkeep.tape.copy import choose_cartridge
    from vmkeep.tape.errors import NoCartridge
    from vmkeep.tape.library import Pool

    pool = Pool("monthly", retention_days=30, append=False)
    now = datetime(2026, 12, 1, tzinfo=UTC)
    codes = [f"VMK00{i}L6" for i in range(1, 9)]
    for code in codes:  # every cartridge belongs to another pool, written today
        library.update_media(code, pool="daily", files=1, expires=(now + timedelta(7)).isoformat())
    library.update_media("VMK005L6", pool="monthly", files=2,
                         expires=(now + timedelta(30)).isoformat(), last_written=now.isoformat())
    with clock.frozen(now), pytest.raises(NoCartridge):
        choose_cartridge(library, pool, "r", set())
    with clock.frozen(now + timedelta(31)):
        assert choose_cartridge(library, pool, "r", set()) == ("VMK005L6", "expired")
    library.update_media("VMK007L6", pool=None, files=0, expires=None)
    with clock.frozen(now):
        assert choose_cartridge(library, pool, "r", set()) == ("VMK007L6", "scratch")
    library.update_media("VMK008L6", pool="monthly", files=0, expires=None)
    with clock.frozen(now):
        assert choose_cartridge(library, pool, "r", set()) == ("VMK008L6", "empty")
    library.update_media("VMK003L6", pool="monthly", files=1, repository_id="r", sequence=9)
    appending = Pool("monthly", 30, append=True)
    with clock.frozen(now):
        assert choose_cartridge(library, appending, "r", set()) == ("VMK003L6", "append")
        assert choose_cartridge(library, pool, "r", set()) == ("VMK008L6", "empty")


def test_incremental_copy_references_packs_already_in_the_pool(
    library: Library, tmp_path: Path
) -> None:
    from tests.storage.storage_helpers import scribble

    repo = Repository.init(str(tmp_path / "repo"), pack_size=256 * 1024)
    img = write_image(tmp_path / "d.img", size=12 * 1024 * 1024)  # 4 MiB of random chunks
    first, _ = backup(repo, img)
    r1 = copy_points(repo, library, [first.id], "daily")
    scribble(img, [(100_000, 5000)])  # one chunk changes
    second, _ = backup(repo, img)
    digest = sha(img)
    r2 = copy_points(repo, library, [second.id], "daily")
    recs = catalog.records(repo)
    rec = next(r for r in recs if second.id in r.points)
    first_rec = next(r for r in recs if first.id in r.points)

    def packed(r: catalog.FileRecord) -> int:
        return sum(v["size"] for k, v in r.objects.items() if k.startswith("packs/"))

    assert r2.objects < r1.objects and packed(rec) < packed(first_rec) / 2
    assert rec.refs[second.id] and all(v[0] == "VMK001L6" for v in rec.refs[second.id].values())
    out = tmp_path / "inc"
    restore_point(library, str(out), second.id, catalog_records=catalog.records(repo))
    assert restored_sha(Repository.open(str(out)), second.id, tmp_path) == digest
    # a pool without live cartridges of its own copies everything again
    r3 = copy_points(repo, library, [second.id], "weekly")
    assert r3.objects > r2.objects


def test_volume_overflow_rewrites_unacknowledged_objects_on_the_next_cartridge(
    tmp_path: Path, tape_dir: Path
) -> None:
    from tests.tape.fake_library import FakeLibrary
    from tests.tape.fake_transport import FakeTape

    # cartridges without early warning: the drive overflows mid-object
    lib = FakeLibrary({f"FAKE0{i}": FakeTape(capacity=1_500_000) for i in range(1, 6)})
    repo, [(pid, digest)] = _repo(tmp_path, size=6 * 1024 * 1024)
    report = copy_points(repo, lib, [pid], "daily", block_size=64 * 1024,
                         streaming=Streaming(depth=2))
    recs = catalog.records(repo)
    assert len(report.cartridges) >= 2 and not recs[0].complete
    for rec in recs:  # what a record lists is acknowledged by the drive, never split
        assert sum(v["size"] for v in rec.objects.values()) <= 1_500_000
    listed = [k for r in recs for k in r.objects if k.startswith("packs/")]
    assert len(listed) == len(set(listed))  # each pack catalogued once
    out = tmp_path / "back"
    restore_point(lib, str(out), pid, catalog_records=recs)
    assert restored_sha(Repository.open(str(out)), pid, tmp_path) == digest


def test_an_object_larger_than_a_cartridge_is_a_clear_error(
    tmp_path: Path, tape_dir: Path
) -> None:
    import pytest

    from tests.tape.fake_library import FakeLibrary
    from tests.tape.fake_transport import FakeTape
    from vmkeep.tape.errors import TapeJobError

    lib = FakeLibrary({f"FAKE0{i}": FakeTape(capacity=600_000) for i in range(1, 4)})
    # a 1 MiB random chunk stored whole (version 1: no content-defined pieces of 256 KiB)
    repo, [(pid, _)] = _repo(tmp_path, size=3 * 1024 * 1024, image_cdc=None)
    with pytest.raises(TapeJobError, match="does not fit"):
        copy_points(repo, lib, [pid], "daily", block_size=64 * 1024,
                    streaming=Streaming(depth=2))
    assert len([m for m in lib.media().values() if m.files]) == 1  # one cartridge tried


def test_uncatalogued_data_after_the_last_file_is_not_appended_to(
    library: Library, tmp_path: Path
) -> None:
    repo, [(p1, _), (p2, d2)] = _repo(tmp_path, n=2, size=1024 * 1024)
    copy_points(repo, library, [p1], "daily")
    with library.drive_lock(0) as di:  # a job that died mid-file: blocks, no filemark
        drive = library.open_drive(di)
        library.load("VMK001L6", di)
        drive.wait_ready()
        drive.space_to_eod()
        drive.write_block(b"\xff" * 65536)
        library.unload(di)
        drive.close()
    r2 = copy_points(repo, library, [p2], "daily")
    assert r2.cartridges == ["VMK002L6"] and any("VMK001L6" in w for w in r2.warnings)
    out = tmp_path / "r2"
    restore_point(library, str(out), p2, catalog_records=catalog.records(repo))
    assert restored_sha(Repository.open(str(out)), p2, tmp_path) == d2


def test_two_copy_jobs_use_both_drives_at_once(library: Library, tmp_path: Path) -> None:
    """Each job takes the first free drive: both hold theirs before either copies (a barrier
    inside drive_lock), else a job done before the other starts leaves it drive 0 again."""
    import threading
    from contextlib import contextmanager

    import pytest

    repos = [_repo(tmp_path / f"r{i}", size=2 * 1024 * 1024) for i in range(2)]
    reports: list[object] = [None, None]
    busy = threading.Barrier(2, timeout=300)  # a hang guard
    both_hold = threading.Barrier(2, timeout=300)
    real_drive_lock = Library.drive_lock

    @contextmanager
    def drive_lock(self: Library, index: int | None = None):  # type: ignore[no-untyped-def]
        with real_drive_lock(self, index) as i:
            both_hold.wait()
            yield i

    def job(i: int) -> None:
        repo, [(pid, _)] = repos[i]
        lib = Library(library.cfg)
        try:
            busy.wait()  # start together
            reports[i] = copy_points(repo, lib, [pid], f"pool{i}")
        except BaseException as exc:
            reports[i] = exc
        finally:
            lib.close()

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Library, "drive_lock", drive_lock)
        threads = [threading.Thread(target=job, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
    assert all(not isinstance(r, BaseException) for r in reports), reports
    used = [r.cartridges[0] for r in reports]  # type: ignore[union-attr]
    assert len(set(used)) == 2
    assert sorted(r.drive for r in reports) == [0, 1]  # type: ignore[union-attr]
    for i, (repo, [(pid, digest)]) in enumerate(repos):
        out = tmp_path / f"back{i}"
        restore_point(library, str(out), pid, catalog_records=catalog.records(repo))
        assert restored_sha(Repository.open(str(out)), pid, tmp_path) == digest


def test_killed_library_mid_copy_fails_and_catalogues_nothing(
    vtl, tmp_path: Path  # type: ignore[no-untyped-def]
) -> None:
    import pytest

    from vmkeep.scsi.errors import TransportError

    lib = configure(vtl)
    repo, [(pid, _)] = _repo(tmp_path, size=4 * 1024 * 1024)
    seen = []

    def kill_after_first_object(n: int) -> None:
        seen.append(n)
        if len(seen) == 2:  # config written, the point's data under way
            vtl.kill()

    with pytest.raises(TransportError):
        copy_points(repo, lib, [pid], "daily", block_size=64 * 1024,
                    progress=kill_after_first_object)
    assert catalog.points_on_tape(repo) == set()
    assert not any(m.files for m in lib.media().values())


def test_export_to_the_mail_slot_and_import_back(library: Library) -> None:
    import pytest

    from vmkeep.tape.errors import TapeJobError

    assert library.export_cartridge("VMK008L6") == 900
    mail = [e for e in library.inventory()["elements"] if e["kind"] == "mail"]
    assert mail == [{**mail[0], "full": True, "barcode": "VMK008L6"}]
    with pytest.raises(TapeJobError, match="no free mail slot"):
        library.export_cartridge("VMK007L6")
    assert library.import_cartridge() == "VMK008L6"
    assert library.locate("VMK008L6").kind == "slot"
    with pytest.raises(TapeJobError, match="mail slot is empty"):
        library.import_cartridge()


@pytest.mark.parametrize("version", [4, 5])
def test_compression_units_travel_to_tape_and_stream_back(
    library: Library, tmp_path: Path, version: int
) -> None:
    """A version-4 repository's packs (compression units) and index files (version 2) are
    copied as they are; a repository restored from tape and ``restore-image`` straight from
    tape both rebuild the image bit-identically (version 5: recipes checked by their ids)."""
    from tests.storage.test_image_cdc import files_blob, guest_image
    from vmkeep.storage.codec import CODEC_UNIT
    from vmkeep.tape.image import restore_image_from_tape

    repo = Repository.init(str(tmp_path / "repo"), pack_size=256 * 1024, version=version)
    assert repo.config.version == version
    img = guest_image(tmp_path / "d.img", 0, files_blob(71, 3 * 1024 * 1024))
    point, result = backup(repo, img)
    assert result.stats.units_new > 0
    assert any(loc.codec == CODEC_UNIT for _, loc in repo.index.items())
    copy_points(repo, library, [point.id], "daily")
    out = tmp_path / "out"
    out.mkdir()
    restore_image_from_tape(library, catalog.records(repo), point.id[:8], out / "disk.img")
    assert sha(out / "disk.img") == sha(img)
    restore_point(library, str(tmp_path / "back"), point.id[:12],
                  catalog_records=catalog.records(repo))
    fresh = Repository.open(str(tmp_path / "back"))
    assert restored_sha(fresh, point.id, tmp_path) == sha(img)


def test_queued_writes_follow_the_setting(
    library: Library, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VMKEEP_TAPE_QUEUED_WRITES sets the WRITEs a copy keeps queued at the drive (default 2;
    1 for a target that does not execute SIMPLE tasks in order); the copy reads back the same
    either way, and a value outside 1..8 is a usage error before anything moves."""
    import vmkeep.tape.copy as copy_module
    from vmkeep.errors import UsageError

    seen: list[int] = []
    real = copy_module.BlockWriter

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            seen.append(self._outstanding)

    monkeypatch.setattr(copy_module, "BlockWriter", Recording)
    repo, [(p1, d1), (p2, d2)] = _repo(tmp_path, n=2)
    copy_points(repo, library, [p1], "daily")
    assert seen and set(seen) == {DEFAULT_OUTSTANDING}
    monkeypatch.setenv("VMKEEP_TAPE_QUEUED_WRITES", "1")
    seen.clear()
    copy_points(repo, library, [p2], "daily")
    assert seen and set(seen) == {1}
    for pid, digest in ((p1, d1), (p2, d2)):
        out = tmp_path / f"restored-{pid[:8]}"
        restore_point(library, str(out), pid[:12], catalog_records=catalog.records(repo))
        assert restored_sha(Repository.open(str(out)), pid, tmp_path) == digest
    monkeypatch.setenv("VMKEEP_TAPE_QUEUED_WRITES", "0")
    with pytest.raises(UsageError, match="VMKEEP_TAPE_QUEUED_WRITES"):
        copy_points(repo, library, [p1], "weekly")


def test_a_relabelled_cartridge_leaves_the_catalog(library: Library, tmp_path: Path) -> None:
    """An expired cartridge reused by its pool is relabelled: the repository's records of its
    old files go, so no restore looks for those points there (the new file 1 replaced only the
    old file 1's record)."""
    from datetime import timedelta

    from vmkeep import clock
    from vmkeep.tape.library import Pool, save_pool

    repo, [(p1, _), (p2, _), (p3, d3)] = _repo(tmp_path, n=3, size=1024 * 1024)
    save_pool(Pool("short", retention_days=1, append=True))
    copy_points(repo, library, [p1], "short")
    copy_points(repo, library, [p2], "short")  # appended: file 3
    assert catalog.points_on_tape(repo) == {p1, p2}
    assert {(r.tape_id, r.file) for r in catalog.records(repo)} == {("VMK001L6", 1),
                                                                     ("VMK001L6", 3)}
    library.update_media("VMK001L6", full=True)
    later = clock.now() + timedelta(days=2)
    for code in [f"VMK00{i}L6" for i in range(2, 9)]:  # nothing else is free
        library.update_media(code, pool="other", files=1,
                             expires=(later + timedelta(days=30)).isoformat())
    with clock.frozen(later):
        again = copy_points(repo, library, [p3], "short")
    assert again.cartridges == ["VMK001L6"]  # the expired one, relabelled
    assert catalog.points_on_tape(repo) == {p3}
    assert [(r.tape_id, r.file) for r in catalog.records(repo)] == [("VMK001L6", 1)]
    out = tmp_path / "back"
    restore_point(library, str(out), p3[:12], catalog_records=catalog.records(repo))
    assert restored_sha(Repository.open(str(out)), p3, tmp_path) == d3


def test_a_cartridge_relabelled_behind_the_catalog_is_refused(
    library: Library, tmp_path: Path
) -> None:
    """`tape label --force` (or another repository reusing the cartridge) overwrote what the
    catalog still lists: restores say so instead of reading another tape's files."""
    from datetime import timedelta

    from vmkeep import clock
    from vmkeep.tape.errors import CartridgeRelabelled
    from vmkeep.tape.image import restore_image_from_tape
    from vmkeep.tape.label import Label, write_label

    repo, [(pid, _)] = _repo(tmp_path, size=1024 * 1024)
    copy_points(repo, library, [pid], "daily")
    later = (clock.now() + timedelta(hours=1)).isoformat()
    with library.drive_lock(0) as di:
        library.load("VMK001L6", di)
        drive = library.open_drive(di)
        drive.wait_ready()
        drive.set_variable_blocks()
        write_label(drive, Label("VMK001L6", "daily", later, 1 << 20, repo.config.id, 7))
        drive.close()
        library.unload(di)
    with pytest.raises(CartridgeRelabelled, match="VMK001L6 was relabelled"):
        restore_point(library, str(tmp_path / "back"), pid[:12],
                      catalog_records=catalog.records(repo))
    with pytest.raises(CartridgeRelabelled):
        restore_image_from_tape(library, catalog.records(repo), pid[:12], tmp_path / "d.img")
    assert not (tmp_path / "d.img").exists()
