"""Suite-wide pytest configuration.

* ``esx_lab`` (the ESX lab) comes from :mod:`vmkeep.lab.pytest_plugin`.
* ``prefect_api``: one real Prefect server per test session, on loopback, with its own
  ``PREFECT_HOME``; tests that run flows through Prefect use it (``PREFECT_API_URL`` is set for
  them only).  Everything else runs flows directly and never needs a server.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
# Client-side state (rollback detection, storage/known_state.py): a scratch directory per session,
# never the developer's home; subprocesses (CLI tests, Prefect servers) inherit it.
os.environ["VMKEEP_STATE_DIR"] = tempfile.mkdtemp(prefix="vmkeep-test-state-")
atexit.register(shutil.rmtree, os.environ["VMKEEP_STATE_DIR"], True)
# Prefect profiles: an empty one per session, never the user's ~/.prefect/profiles.toml.  A profile
# left active there (say with a PREFECT_API_URL from another run) would otherwise switch every CLI
# test from direct mode to Prefect (vmkeep/orchestration.py): a leftover setting must not decide
# whether the suite passes.  Tests that want Prefect set PREFECT_API_URL (``prefect_api``).
os.environ["PREFECT_PROFILES_PATH"] = os.path.join(
    os.environ["VMKEEP_STATE_DIR"], "prefect-profiles.toml"
)
os.environ.pop("PREFECT_PROFILE", None)

pytest_plugins = [
    "vmkeep.lab.pytest_plugin",
    "tests.servers.sshd_server",
    "tests.servers.s3_server",
    "tests.servers.smbd_server",
]

DEV_KEYS = Path(__file__).parent / "licensing" / "keys"


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A running Prefect server for the session; yields its API URL."""
    from vmkeep.deployments import prefect_server as ps

    server = ps.start(tmp_path_factory.mktemp("prefect-home"))
    try:
        yield server.api_url
    finally:
        server.stop()


@pytest.fixture
def prefect_api(prefect_server: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point this test's Prefect client (and subprocesses) at the session's server."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.setenv("PREFECT_API_URL", prefect_server)
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        yield prefect_server


@pytest.fixture
def dev_licence(monkeypatch: pytest.MonkeyPatch) -> None:
    """Install the development licence (tests/licensing/keys) for backup flows."""
    monkeypatch.setenv("VMKEEP_LICENSE_PUBKEY", str(DEV_KEYS / "dev_public.pem"))
    monkeypatch.setenv("VMKEEP_LICENSE", str(DEV_KEYS / "dev_licence.json"))
