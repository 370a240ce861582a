"""vmkeep's own Prefect API calls: quick retries on a busy server (``api_calls.quick``), spec
parameters recorded without FastAPI (``fast_parameters``) and the CLI's exit after an
orchestrated run (``cli.fast_exit``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from vmkeep.jobs.specs import BackupVmSpec
from vmkeep.runtime import api_calls


def _status(code: int, headers: dict[str, str] | None = None) -> httpx.HTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1/api/v2/concurrency_limits/increment")
    response = httpx.Response(code, headers=headers, request=request)
    return httpx.HTTPStatusError(f"{code}", request=request, response=response)


def _flaky(errors: list[BaseException]) -> Any:
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES

    seen: list[int] = []

    def call() -> str:
        seen.append(PREFECT_CLIENT_MAX_RETRIES.value())
        if errors:
            raise errors.pop(0)
        return "ok"

    return call, seen


def test_busy_server_is_asked_again_quickly_with_prefect_retries_off() -> None:
    slept: list[float] = []
    call, seen = _flaky([_status(503), _status(503), httpx.ConnectError("refused")])
    assert api_calls.quick(call, sleep=slept.append) == "ok"
    assert slept == [0.05, 0.1, 0.2]  # not Prefect's 2 s
    assert seen == [0, 0, 0, 0]  # Prefect's own client retries were off for every attempt


def test_a_connection_the_server_dropped_is_asked_again() -> None:
    """As Prefect's client does: a reused keep-alive connection the server closed."""
    slept: list[float] = []
    call, seen = _flaky([httpx.RemoteProtocolError("Server disconnected without sending a "
                                                   "response."), httpx.ReadError("reset")])
    assert api_calls.quick(call, sleep=slept.append) == "ok"
    assert slept == [0.05, 0.1] and len(seen) == 3


def test_retry_after_is_honoured_and_other_errors_raise_at_once() -> None:
    slept: list[float] = []
    call, _ = _flaky([_status(429, {"Retry-After": "0.7"})])
    assert api_calls.quick(call, sleep=slept.append) == "ok"
    assert slept == [0.7]
    for code in (404, 423, 500):  # not found, locked (the slot pool's answer), a server bug
        call, seen = _flaky([_status(code)])
        with pytest.raises(httpx.HTTPStatusError):
            api_calls.quick(call, sleep=slept.append)
        assert len(seen) == 1


def test_a_server_busy_past_the_deadline_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(api_calls, "DEADLINE_S", 1.0)
    slept: list[float] = []
    call, _ = _flaky([_status(503) for _ in range(50)])
    with pytest.raises(httpx.HTTPStatusError):
        api_calls.quick(call, sleep=slept.append)  # gives up once the next wait would pass it
    assert slept and max(slept) <= api_calls.MAX_DELAY_S


def test_spec_parameters_are_recorded_as_prefect_would() -> None:
    from fastapi.encoders import jsonable_encoder
    from prefect import flow

    from vmkeep.runtime.prefect_runtime import fast_parameters

    @flow
    def job_flow(spec: BackupVmSpec) -> None: ...

    @flow
    def plain_flow(n: int) -> None: ...

    spec = BackupVmSpec.model_validate(
        {"repo": "/r", "vm": "linux01", "vcenter": {"url": "vc.example", "insecure": True}}
    )
    assert fast_parameters(job_flow).serialize_parameters({"spec": spec}) == {
        "spec": jsonable_encoder(spec)
    }
    assert fast_parameters(job_flow) is job_flow  # installed once
    assert fast_parameters(plain_flow).serialize_parameters({"n": 3}) == {"n": 3}


def _exit_probe(tmp_path: Path, prefect: bool, code: int) -> subprocess.CompletedProcess[str]:
    marks = tmp_path / "marks"
    script = textwrap.dedent(f"""
        import atexit, logging, os, sys, tempfile, weakref
        from vmkeep.cli import fast_exit
        if {prefect!r}:
            import prefect  # a run through Prefect: its modules are loaded

        fast_exit.install()
        def mark(what):
            with open({str(marks)!r}, "a") as out:
                out.write(what + "\\n")
        class Lease: pass
        lease = Lease()
        weakref.finalize(lease, mark, "finalizer")  # a repository lock's lease, say
        scratch = tempfile.TemporaryDirectory(dir={str(tmp_path)!r})  # left open: cleaned
        fd = os.open({str(marks)!r}, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        class Late:  # only the interpreter's teardown would call __del__
            def __del__(self, write=os.write, fd=fd):
                write(fd, b"teardown\\n")
        late = Late()
        atexit.register(mark, "atexit")
        sys.stdout.write("summary")  # no newline: still buffered at exit
        fast_exit.leave({code})
        sys.exit({code})
    """)
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("prefect", [True, False])
def test_cli_exit_keeps_code_output_and_exit_hooks(tmp_path: Path, prefect: bool) -> None:
    """Direct and orchestrated runs alike leave with ``os._exit`` after every exit hook."""
    done = _exit_probe(tmp_path, prefect, 3)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "summary"
    assert sorted((tmp_path / "marks").read_text().split()) == ["atexit", "finalizer"]
    assert [p.name for p in tmp_path.iterdir()] == ["marks"]  # the temporary directory went


def test_an_in_process_cli_run_keeps_the_callers_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the console script ends the process early: pytest running the CLI in-process must
    keep its own exit status (a fast exit registered here would end pytest with the CLI's)."""
    import vmkeep.cli.main as cli_main
    from vmkeep.cli import fast_exit

    monkeypatch.setattr(sys, "argv", ["vmkeep", "--help"])
    monkeypatch.setattr(fast_exit, "_state", {})
    with pytest.raises(SystemExit):
        cli_main.main()
    assert fast_exit._state == {}


def test_prefects_own_client_answers_a_503_without_its_2_s_sleep(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through Prefect's real synchronous client over HTTP: with retries off it still slept its
    2 s back-off after the only attempt (measured: a one-VM CLI run waited 2.1 s for a slot
    lease after one 503) — inside quick() that sleep is gone, outside it stays."""
    import json
    import threading
    import time
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from vmkeep.runtime.prefect_runtime import _PrefectSlots

    posts: list[str] = []

    class Busy(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, code: int, body: object) -> None:
            data = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            self._answer(200, {"token": "t", "client": "c", "expiration": "2099-01-01T00:00:00Z"})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            posts.append(self.path)
            if len(posts) == 1:  # SQLite was locked: Prefect's server answers 503
                self._answer(503, {"exception_message": "Service Unavailable"})
            else:
                self._answer(200, {"lease_id": "00000000-0000-0000-0000-000000000001",
                                   "limits": []})

    server = ThreadingHTTPServer(("127.0.0.1", 0), Busy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    real_sleep, slept = time.sleep, []

    def recording_sleep(seconds: float) -> None:
        slept.append(seconds)
        real_sleep(min(seconds, 0.01))

    monkeypatch.setattr(time, "sleep", recording_sleep)  # what Prefect's client sleeps
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = f"http://127.0.0.1:{server.server_port}/api"
    try:
        with temporary_settings({PREFECT_API_URL: url}):
            slots = _PrefectSlots({}, "00000000-0000-0000-0000-000000000002")
            lease, _granted = slots._lease(slots.client(), ["vmkeep-host-esx01"])
            slots.close()
    finally:
        server.shutdown()
    assert lease == "00000000-0000-0000-0000-000000000001"
    assert len(posts) == 2  # asked again after the 503 ...
    assert slept == []  # ... by quick() (its own 0.05 s), never after Prefect's 2 s
    api_calls._SleepAfterLastAttemptSkipped.sleep(0.02)  # outside quick(): sleeps as asked
    assert slept == [0.02]


def test_a_lease_released_twice_is_released(prefect_api: str) -> None:
    """A release whose answer a dropped connection lost is asked again (quick()): the real
    server accepts the second release of the same lease."""
    import uuid

    from vmkeep.runtime.prefect_runtime import _PrefectSlots

    slots = _PrefectSlots({}, str(uuid.uuid4()))
    try:
        lease = slots.acquire([f"vmkeep-test-{uuid.uuid4().hex[:8]}"])
        slots.release(lease)
        slots.release(lease)  # the server no longer knows it
    finally:
        slots.close()
