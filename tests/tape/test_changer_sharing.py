"""The changer is shared safely: every locate + move is one changer turn, turns never overlap
(two jobs, each with its own changer session, as two data movers have), and the caller's guard
— a Prefect global concurrency limit in the flows — is held for each turn (issue 17, item 3)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

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
