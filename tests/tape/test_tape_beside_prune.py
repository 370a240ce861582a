"""#18: a tape copy beside prune (real tgt VTL over libiscsi).  The copy's repository loaded the
index before prune started (its reader lease predates every deletion record); prune repacks
everything the kept point uses and, once the old packs are condemned, the copy runs from its old
view of the index (the condemned packs).  It must find every pack it needs, the tape must
restore the point bit-identically, and once the copy's lease is gone the next prune deletes the
old packs."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from tests.storage.storage_helpers import backup, restored_sha, scribble, sha, write_image
from vmkeep.storage.checker import check_repository
from vmkeep.storage.forget import forget_ids
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository
from vmkeep.tape import catalog
from vmkeep.tape.copy import copy_points
from vmkeep.tape.library import Library
from vmkeep.tape.restore import restore_point


def test_tape_copy_beside_prune_reads_what_it_indexed(library: Library, tmp_path: Path) -> None:
    repo = Repository.init(str(tmp_path / "repo"), pack_size=256 * 1024, image_chunk_size=64 * 1024)
    img = write_image(tmp_path / "d.img", size=2 * 1024 * 1024, seed=21)
    old, _ = backup(repo, img, name="d")
    scribble(img, [(0, 500_000)], seed=22)
    kept, _ = backup(repo, img, name="d")
    forget_ids(repo, [old.id])
    repo.close()
    location = repo.backend.location
    copier = Repository.open(location)
    assert len(copier.index) > 0  # loaded: a reader lease older than anything prune records
    copied = []

    def step(name: str) -> None:
        if name == "condemned" and not copied:
            copied.append(copy_points(copier, library, [kept.id], "daily"))

    first = prune(Repository.open(location), grace=timedelta(0), repack_below=1.0, step=step)
    assert copied and copied[0].bytes > 0, first.to_json()
    assert first.packs_held_by_leases > 0 and first.packs_deleted == 0
    out = tmp_path / "from-tape"
    restore_point(library, str(out), kept.id, catalog_records=catalog.records(copier))
    assert restored_sha(Repository.open(str(out)), kept.id, tmp_path) == sha(img)
    copier.close()
    second = prune(Repository.open(location), grace=timedelta(0), repack_below=1.0)
    assert second.packs_deleted > 0
    fresh = Repository.open(location)
    assert check_repository(fresh, read_data=True).ok
    assert restored_sha(fresh, kept.id, tmp_path) == sha(img)
