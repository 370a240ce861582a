"""The changer is shared safely: every locate + move is one changer turn, turns never overlap
(two jobs, each with its own changer session, as two data movers have), and the caller's guard
— the runtime's slot ``vmkeep-tape-changer-<library>``, a Prefect global concurrency limit under
Prefect — is held for each turn (issue 17, item 3); the tape jobs hold it, and a drive slot,
through :meth:`Runtime.slots <vmkeep.runtime.base.Runtime.slots>` (issue 19)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.licensing.licensing_devkeys import DEV_PUBLIC, write_licence
from tests.storage.storage_helpers import backup, write_image
from vmkeep.jobs.maintenance_specs import TapeCopySpec, TapeRestoreSpec
from vmkeep.jobs.tape_copy import tape_copy
from vmkeep.jobs.tape_restore import tape_restore
from vmkeep.licensing import store
from vmkeep.runtime import LocalRuntime
from vmkeep.storage.repository import Repository
from vmkeep.tape.library import Library


class RecordingGuard:
    """A guard that counts turns and the most turns ever held at once."""

    def __init__(self, shared: dict[str, int], lock: threading.Lock) -> None:
        self.shared, self.lock = shared, lock

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self.lock:
            self.shared["turns"] += 1
            self.shared["now"] += 1
            self.shared["most"] = max(self.shared["most"], self.shared["now"])
        try:
            yield
        finally:
            with self.lock:
                self.shared["now"] -= 1


def test_two_jobs_moving_cartridges_take_turns_with_the_changer(library: Library) -> None:
    shared = {"turns": 0, "now": 0, "most": 0}
    guard = RecordingGuard(shared, threading.Lock())
    jobs = [Library(library.cfg, changer_guard=guard) for _ in range(2)]
    errors: list[BaseException] = []

    def shuffle(lib: Library, barcode: str, drive: int) -> None:
        try:
            for _ in range(3):
                lib.load(barcode, drive)
                assert lib.unload(drive) == barcode
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=shuffle, args=(jobs[0], "VMK003L6", 0)),
        threading.Thread(target=shuffle, args=(jobs[1], "VMK004L6", 1)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    for lib in jobs:
        lib.close()
    assert not errors, errors
    assert shared["turns"] == 12  # 2 jobs x 3 rounds x (load, unload)
    assert shared["most"] == 1
    assert {library.locate(b).kind for b in ("VMK003L6", "VMK004L6")} == {"slot"}


def test_an_unload_is_one_turn_and_export_import_take_turns(library: Library) -> None:
    shared = {"turns": 0, "now": 0, "most": 0}
    lib = Library(library.cfg, changer_guard=RecordingGuard(shared, threading.Lock()))
    try:
        lib.load("VMK005L6", 0)
        lib.unload(0)
        assert shared["turns"] == 2
        lib.export_cartridge("VMK005L6")
        lib.import_cartridge()
        assert shared["turns"] == 4 and shared["most"] == 1
    finally:
        lib.close()


class SlotRecorder(LocalRuntime):
    """A LocalRuntime noting every slot request (name, limit), and how many turns were held."""

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[str, int]] = []

    @contextmanager
    def slots(self, slots: Any) -> Iterator[None]:  # type: ignore[override]
        self.requests.extend(slots)
        with super().slots(slots):
            yield


def test_tape_jobs_hold_the_changer_and_a_drive_through_the_runtime(
    library: Library, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "VENDOR_PUBLIC_KEY_PEM", DEV_PUBLIC.read_bytes())
    lic = write_licence(tmp_path / "lic.json", esx_server_client_5seat=1, autoloader_slot=16)
    repo = Repository.init(str(tmp_path / "repo"))
    point, _ = backup(repo, write_image(tmp_path / "d.img", size=512 * 1024))
    rt = SlotRecorder()
    report = tape_copy(
        TapeCopySpec(repo=str(tmp_path / "repo"), library="lab", points=[point.id[:12]],
                     licence_file=str(lic)),
        rt,
    )
    assert report["cartridges"] and report["bytes"] > 0
    assert ("vmkeep-tape-lab", 2) in rt.requests  # one of the library's two drives
    turns = [r for r in rt.requests if r == ("vmkeep-tape-changer-lab", 1)]
    assert len(turns) >= 2  # at least load and unload, each one turn
    assert [k for k, _, _ in rt.reports] == [
        "vmkeep-licence-report", "vmkeep-licence-usage", "vmkeep-tape-copy",
        "vmkeep-tape-copy-report",
    ]

    rt = SlotRecorder()
    restored = tape_restore(
        TapeRestoreSpec(point=point.id, to_repo=str(tmp_path / "back"), library="lab",
                        catalog_repo=str(tmp_path / "repo")), rt
    )
    assert restored["objects"] > 0
    assert ("vmkeep-tape-lab", 2) in rt.requests
    assert ("vmkeep-tape-changer-lab", 1) in rt.requests
    assert Repository.open(str(tmp_path / "back")).resolve(point.id[:12]) == point.id
