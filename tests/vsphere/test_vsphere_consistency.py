"""Consistency labels from what actually happened (pure)."""

from __future__ import annotations

import pytest

from vmkeep.vsphere.consistency import GuestFacts, label

LINUX = GuestFacts("linux", True, False)
WINDOWS = GuestFacts("windows", True, False)
WINDOWS_VSS = GuestFacts("windows", True, True)


@pytest.mark.parametrize(
    ("quiesced", "facts", "pre_freeze_ok", "expected"),
    [
        (False, LINUX, True, "crash"),
        (False, WINDOWS_VSS, False, "crash"),
        (True, LINUX, False, "filesystem"),
        (True, LINUX, True, "application"),
        (True, WINDOWS, False, "filesystem"),  # no disk.EnableUUID: VSS in file-system mode
        (True, WINDOWS, True, "filesystem"),
        (True, WINDOWS_VSS, False, "application"),
        (True, GuestFacts("windows", False, True), False, "filesystem"),  # Tools not running
        (True, GuestFacts("other", True, False), False, "filesystem"),
        (True, None, False, "filesystem"),
    ],
)
def test_label(
    quiesced: bool, facts: GuestFacts | None, pre_freeze_ok: bool, expected: str
) -> None:
    got, reason = label(quiesced, facts, pre_freeze_ok)
    assert got == expected and reason
