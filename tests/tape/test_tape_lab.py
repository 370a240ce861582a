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


def test_lab_status_lists_the_running_vtl(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import json
    import os

    from vmkeep.lab import runner

    start_vtl(tmp_path / "probe").stop()  # skips without tgt
    state = tmp_path / "lab"
    state.mkdir()
    info = runner.LabInfo("https://127.0.0.1:1/sdk", "127.0.0.1", 1, "u", "p", "t", "c", "dc", [])
    (state / "lab.json").write_text(json.dumps(info.to_json()))
    (state / "esxsim.pid").write_text(str(os.getpid()))
    monkeypatch.setattr(runner, "_pid_alive", lambda pid: pid == os.getpid())  # "running"
    assert runner.status(state).tape is None  # type: ignore[union-attr]
    v = vtl.ensure(state / "vtl")
    try:
        tape = runner.status(state).tape  # type: ignore[union-attr]
        assert tape is not None and tape["url"] == v.url and tape["slots"] == 8
        assert tape["barcodes"][0] == "VMK001L6" and tape["drive_luns"] == [1, 2]
    finally:
        vtl.stop_running(state / "vtl")
