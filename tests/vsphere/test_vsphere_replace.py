"""The pure parts of replacing a VM: the name it carries while set aside, and its mark."""

from __future__ import annotations

from vmkeep.vsphere.replace import MAX_VM_NAME, aside_name, mark_value, parse_aside
from vmkeep.vsphere.restore_marker import new_mark


def test_the_aside_name_says_why_and_fits_vsphere_s_limit() -> None:
    assert aside_name("web01", "0123456789abcdef") == "web01 (vmkeep: being replaced, run 01234567)"
    long = aside_name("x" * 200, "0123456789abcdef")
    assert len(long) == MAX_VM_NAME and long.endswith("(vmkeep: being replaced, run 01234567)")
    # as vSphere stores it (names.py: / \ % escaped to three characters each), still ≤ 80
    slashes = aside_name("a/b\\c%d" * 30, "0123456789abcdef")
    stored = slashes.replace("%", "%25").replace("/", "%2f").replace("\\", "%5c")
    assert len(stored) <= MAX_VM_NAME and slashes.startswith("a/b\\c%d")
    assert slashes.endswith("(vmkeep: being replaced, run 01234567)")


def test_the_mark_keeps_the_name_and_power_state_even_with_semicolons_in_the_name() -> None:
    mark = new_mark("run-1")
    parsed = parse_aside(mark_value(mark, True, "db;prod 01"))
    assert parsed == (mark, True, "db;prod 01")
    assert parse_aside(mark_value(mark, False, "web01")) == (mark, False, "web01")
    for bad in (None, "", "run;2026-01-01T00:00:00;host;1;2;web01", "run;x;host;1;1;web01",
                "run;2026-01-01T00:00:00;host;1;1;"):
        assert parse_aside(bad) is None
