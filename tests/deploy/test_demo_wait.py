"""``make demo`` on a terminal keeps the Prefect server up and lists its runs (issue 20, item 4);
piped (CI) it stops at once."""

from __future__ import annotations

import argparse
import io
import threading
from contextlib import redirect_stdout
from pathlib import Path

import pytest

from vmkeep.deployments import demo, prefect_server


def test_only_a_terminal_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO())
    assert not demo.interactive(argparse.Namespace(no_wait=False))


@pytest.mark.slow
def test_lists_the_runs_and_waits_until_the_server_stops(tmp_path: Path) -> None:
    server = prefect_server.start(tmp_path / "server")
    try:
        from prefect import flow
        from prefect.settings import PREFECT_API_URL, temporary_settings

        @flow(name="demo-step")
        def step() -> int:
            return 1

        with temporary_settings({PREFECT_API_URL: server.api_url}):
            step()
        out = io.StringIO()
        done = threading.Event()

        def run() -> None:
            with redirect_stdout(out):
                demo.show_runs_and_wait(server)
            done.set()

        waiter = threading.Thread(target=run, daemon=True)
        waiter.start()
        for _ in range(600):  # the listing is printed before the wait starts
            if "Ctrl-C" in out.getvalue():
                break
            done.wait(0.1)
        assert not done.is_set()  # still serving the UI
        server.stop()
        assert done.wait(60)
        text = out.getvalue()
        assert "the demo's 1 Prefect runs" in text and "Completed" in text
        assert f"open {server.ui_url}/runs" in text
    finally:
        server.stop()
