"""The lab's VTL as ``vmkeep lab up`` runs it: started once, found again by its state, stopped
by pid."""

from __future__ import annotations

from pathlib import Path

from tests.tape.vtl_helpers import start_vtl
from vmkeep.lab import vtl


def test_vtl_ensure_reuses_and_stop_running_stops(tmp_path: Path) -> None:
    start_vtl(tmp_path / "probe").stop()  # skips without tgt
    state = tmp_path / "lab-vtl"
    first = vtl.ensure(state)
    try:
        again = vtl.ensure(state)
        assert again.pid == first.pid and again.url == first.url
        doc = vtl.load(state)
        assert doc is not None and doc.to_json()["slots"] == 8
    finally:
        assert vtl.stop_running(state)
    assert vtl.load(state) is None and not vtl.stop_running(state)
