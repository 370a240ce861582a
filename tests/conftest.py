"""Suite-wide pytest configuration.

* ``esx_lab`` (the ESX lab) comes from :mod:`vmkeep.lab.pytest_plugin`.
* ``prefect_api``: one real Prefect server per test session, on loopback, with its own
  ``PREFECT_HOME``; tests that run flows through Prefect use it (``PREFECT_API_URL`` is set for
  them only).  Everything else runs flows directly and never needs a server.
* Hypothesis runs with the suite's profile (:mod:`tests.hypothesis_profile`: derandomized, no
  deadline, no health checks of the machine's speed).
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.hypothesis_profile  # noqa: F401 - loads the suite's Hypothesis profile

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

# Client-side state (rollback detection, storage/known_state.py; the licence usage ledger,
# licensing/ledger.py) and the licence's config dir: scratch directories, never the developer's
# home; subprocesses (CLI tests, Prefect servers) inherit them.  Each test gets its own (the
# autouse fixture below), so it starts as a fresh installation with no licence (community tier).
os.environ["VMKEEP_STATE_DIR"] = tempfile.mkdtemp(prefix="vmkeep-test-state-")
os.environ["VMKEEP_CONFIG_DIR"] = tempfile.mkdtemp(prefix="vmkeep-test-config-")
#: removed at exit, also when the exit watchdog below ends a hung exit (no atexit then)
SESSION_DIRS = (os.environ["VMKEEP_STATE_DIR"], os.environ["VMKEEP_CONFIG_DIR"])
for _folder in SESSION_DIRS:
    atexit.register(shutil.rmtree, _folder, True)
os.environ.pop("VMKEEP_LICENSE", None)
# CLI subprocesses run as ``python -m tests.support.run_cli`` (the test-only entry point that
# trusts the development licence key): make the source tree importable whatever their cwd.
_ROOT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join(
    dict.fromkeys([_ROOT, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
)
# Prefect profiles: the session's own (empty) file, never ~/.prefect/profiles.toml — an active
# profile with an API URL there (e.g. left by a `vmkeep serve` on a shared machine) would turn
# every "direct mode" CLI run of the tests into an orchestrated one.
SESSION_PROFILES = Path(os.environ["VMKEEP_STATE_DIR"]) / "profiles.toml"
os.environ["PREFECT_PROFILES_PATH"] = str(SESSION_PROFILES)
os.environ.pop("PREFECT_PROFILE", None)

pytest_plugins = [
    "vmkeep.lab.pytest_plugin",
    "tests.servers.sshd_server",
    "tests.servers.s3_server",
    "tests.servers.smbd_server",
]

DEV_KEYS = Path(__file__).parent / "licensing" / "keys"


@pytest.fixture(autouse=True)
def _session_profiles_stay_empty() -> Iterator[None]:
    """A test whose subprocess activated a Prefect profile in the session's profiles file (e.g.
    ``vmkeep serve`` without ``--profile ''``) would send every later CLI subprocess to a server
    that test has stopped: undo it after the test, and fail that test."""
    yield
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or SESSION_PROFILES)
    if profiles != SESSION_PROFILES or not profiles.exists():
        return
    if "PREFECT_API_URL" in profiles.read_text():
        profiles.unlink()
        pytest.fail(f"the test left an active Prefect profile in {profiles}")


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running Prefect server for the session; yields its API URL."""
    from vmkeep.deployments import prefect_server as ps

    server = ps.start(tmp_path_factory.mktemp("prefect-home"))
    try:
        yield server.api_url
    finally:
        _drain_prefect_workers(discard=False)  # deliver what is queued while the server lives
        server.stop()


def _drain_prefect_workers(discard: bool, timeout_s: float = 30.0) -> None:
    """Stop this process's Prefect events and API-log workers, waiting at most ``timeout_s``.

    Prefect drains them at interpreter exit without a bound: a worker still holding events for
    a server a test has already stopped retries each one ~11 times (1 s apart, plus connect
    timeouts), which kept pytest alive 6-10 minutes after its summary.  With ``discard`` the
    queued items are dropped first (at the session's end nobody reads them any more).
    """
    import queue

    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker_type in (EventsWorker, APILogWorker):
        if discard:
            for instance in tuple(worker_type._instances.values()):
                try:
                    while True:
                        instance._queue.get_nowait()
                        instance._queue.task_done()
                except queue.Empty:
                    pass
        worker_type.drain_all(timeout=timeout_s)


#: Seconds pytest may take from its summary to its exit (Prefect's drains, atexit handlers,
#: joining threads) before the watchdog below ends it.
EXIT_GRACE_S = float(os.environ.get("VMKEEP_TEST_EXIT_GRACE_S", "120"))
_session_status: list[int] = []


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _session_status.append(int(exitstatus))


def _exit_watchdog(grace_s: float) -> None:
    """End the process with the session's exit status if it is still alive ``grace_s`` after
    the summary, printing every thread's stack first (what hung is then in the log).

    A daemon timer: a normal exit never waits for it.  It runs while the interpreter joins
    non-daemon threads and runs atexit handlers (Prefect drains its workers there without a
    bound) — the places a finished run was seen to linger for 20 minutes."""
    import faulthandler
    import threading

    status = _session_status[-1] if _session_status else 1

    def fire() -> None:
        sys.stderr.write(f"\npytest still running {grace_s:.0f} s after its summary; "
                         "stacks of all threads:\n")
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        sys.stdout.flush()
        for folder in SESSION_DIRS:  # atexit handlers do not run after os._exit
            shutil.rmtree(folder, ignore_errors=True)
        os._exit(status)

    timer = threading.Timer(grace_s, fire)
    timer.daemon = True
    timer.start()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave no Prefect worker behind for the interpreter's unbounded exit-time drain, and bound
    the rest of the exit with a watchdog."""
    _exit_watchdog(EXIT_GRACE_S)
    if "prefect.events.worker" in sys.modules:
        _drain_prefect_workers(discard=True)


@pytest.fixture
def prefect_api(prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point this test's Prefect client (and subprocesses) at the session's server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    # Prefect keeps one events worker per process for "a running server", bound to the API URL
    # it first saw: after a test that ran a flow in-process against its own (since stopped)
    # server, task runs created from events here would never reach this server.  Start afresh.
    _drain_prefect_workers(discard=True, timeout_s=10.0)
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        yield prefect_server


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest) -> Any:
    """Module- and session-scoped fixtures are set up as fresh installations too: their own
    state and config dirs for the duration of their setup.  Otherwise the licence usage they
    record (backups made to build shared test data) would pile up in the session's state dir
    and the community tier would refuse a later fixture's backups, depending on test order."""
    if fixturedef.scope == "function":
        yield
        return
    saved = {k: os.environ.get(k) for k in ("VMKEEP_STATE_DIR", "VMKEEP_CONFIG_DIR")}
    # in pytest's temporary folder (kept for the last runs, then removed), not loose in /tmp
    folders: pytest.TempPathFactory = request.config._tmp_path_factory  # type: ignore[attr-defined]
    os.environ["VMKEEP_STATE_DIR"] = str(folders.mktemp("fixture-state"))
    os.environ["VMKEEP_CONFIG_DIR"] = str(folders.mktemp("fixture-config"))
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(autouse=True)
def fresh_installation(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test starts as a fresh installation: its own state dir (rollback state, licence usage
    ledger) and config dir, no licence.  Returns the state dir."""
    state = tmp_path_factory.mktemp("vmkeep-state")
    monkeypatch.setenv("VMKEEP_STATE_DIR", str(state))
    monkeypatch.setenv("VMKEEP_CONFIG_DIR", str(tmp_path_factory.mktemp("vmkeep-config")))
    monkeypatch.delenv("VMKEEP_LICENSE", raising=False)
    return state


@pytest.fixture
def dev_trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Trust the development key in this process (the built-in vendor key is replaced in-process;
    CLI subprocesses trust it when started through ``tests.support.run_cli``)."""
    import vmkeep.licensing.store as store

    monkeypatch.setattr(store, "VENDOR_PUBLIC_KEY_PEM", (DEV_KEYS / "dev_public.pem").read_bytes())


@pytest.fixture
def dev_licence(monkeypatch: pytest.MonkeyPatch, dev_trusted: None) -> None:
    """Install the development licence (tests/licensing/keys) for backup flows."""
    monkeypatch.setenv("VMKEEP_LICENSE", str(DEV_KEYS / "dev_licence.json"))
