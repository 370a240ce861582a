"""``vmkeep serve`` / ``make serve``: one command from nothing to a scheduled installation.

1. Start a Prefect server (``prefect server start``) with its state in ``home``: SQLite by
   default; PostgreSQL when ``PREFECT_API_DATABASE_CONNECTION_URL`` is set
   (``postgresql+asyncpg://user:pass@host/db``).  Offline-safe: no telemetry, no promotional
   content, the UI's assets served by the server itself.  With ``api_url`` (or
   ``PREFECT_API_URL`` and ``no_server``) an existing server is used instead.
2. Create the work pools (``vmkeep/deployments/pools.py``), the Secret block holding the vCenter
   password (from ``VMKEEP_VC_PASSWORD``, never printed), the one holding where job reports go
   (from ``VMKEEP_NOTIFY``/``_FILE``/``_ON``, :mod:`vmkeep.runtime.notify`) and the ``vmkeep_*``
   variables.
3. ``prefect deploy --all`` of ``vmkeep/deployments/prefect.yaml`` (it registers every schedule
   off); switch on those of :data:`pools.ON_BY_DEFAULT` and of the pools in ``activate``;
   switch off (paused, with the reason in the description) deployments whose required
   settings are empty (:func:`pools.deactivate_incomplete`).
   Make the Prefect profile ``vmkeep`` point at the server and activate it (``profile``), and
   print ``export PREFECT_API_URL=…`` for shells that already loaded another profile.
4. Start a local worker (a data mover) for each pool in ``workers`` and wait until
   interrupted (Ctrl-C, SIGTERM); then stop the workers and the server started here.

:func:`serve` returns an :class:`Installation` (``setup_only`` skips the workers and the wait),
so tests and other tools can drive the same steps.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmkeep.deployments import pools, prefect_server
from vmkeep.settings import settings

DEFAULT_HOME = Path.home() / ".vmkeep" / "prefect"
DEFAULT_PORT = 4200
PROFILE = "vmkeep"


def use_profile(name: str, api_url: str) -> str:
    """Create or update Prefect profile ``name`` with ``PREFECT_API_URL=api_url`` and make it the
    active one, so ``prefect deployment ls`` (and ``vmkeep`` itself) talk to this server instead
    of starting a temporary one.  Returns the profiles file."""
    from prefect.settings import PREFECT_API_URL
    from prefect.settings.profiles import Profile, load_profiles, save_profiles

    profiles = load_profiles()
    if name in profiles.names:
        profiles.update_profile(name, {PREFECT_API_URL: api_url})
    else:
        profiles.add_profile(Profile(name=name, settings={PREFECT_API_URL: api_url}))
    profiles.set_active(name)
    save_profiles(profiles)
    from prefect.settings import PREFECT_PROFILES_PATH

    return str(PREFECT_PROFILES_PATH.value())


@dataclass
class Installation:
    """What :func:`serve` set up (and owns: the server, if started here, and the workers)."""

    api_url: str
    ui_url: str
    server: prefect_server.PrefectServer | None = None
    workers: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    activated: list[str] = field(default_factory=list)
    inactive: dict[str, str] = field(default_factory=dict)
    profile: str | None = None

    def stop(self) -> None:
        for process in self.workers.values():
            pools.stop_worker(process)
        self.workers.clear()
        if self.server is not None:
            self.server.stop()


def _api_env(api_url: str) -> Any:
    """Point this process's Prefect client at ``api_url`` for the block (os.environ untouched)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: api_url})


def serve(
    home: Path = DEFAULT_HOME,
    port: int = DEFAULT_PORT,
    host: str = "127.0.0.1",
    api_url: str | None = None,
    variables: Mapping[str, Any] | None = None,
    activate: tuple[str, ...] = (),
    workers: tuple[str, ...] = ("lan",),
    worker_env: Mapping[str, str] | None = None,
    deploy: bool = True,
    setup_only: bool = False,
    profile: str | None = None,
    say: Any = print,
) -> Installation:
    """Set up (and, unless ``setup_only``, run) an installation; see the module docstring."""
    server = None
    if api_url is None:
        say(f"starting the Prefect server (state in {home}) …")
        server = prefect_server.start(home, port, host=host)
        api_url, ui_url = server.api_url, server.ui_url
    else:
        ui_url = api_url.removesuffix("/api")
    inst = Installation(api_url, ui_url, server)
    try:
        with _api_env(api_url):
            names = pools.ensure_pools()
            say(f"work pools: {', '.join(names)}")
            password = settings().secret("vc_password")
            if password:
                pools.ensure_password_block(password)
                say(f"vCenter password saved as Secret block {pools.PASSWORD_BLOCK}")
            reports = pools.ensure_notify_block()
            if reports:
                say(reports)
            inst.settings = pools.ensure_variables(dict(variables or {}))
            if deploy:
                say(f"deploying {pools.PREFECT_FILE} …")
                pools.deploy({"PREFECT_API_URL": api_url})
                pools.activate_defaults()
            for location in activate:
                inst.activated += pools.activate(location)
            if deploy:
                inst.inactive = pools.deactivate_incomplete()
                for name, reason in sorted(inst.inactive.items()):
                    say(f"deployment {name}: {reason}")
        if profile:
            inst.profile = use_profile(profile, api_url)
            say(f"Prefect profile {profile!r} (active) points at {api_url}")
        say(f"export PREFECT_API_URL={api_url}")
        if not setup_only:
            log_dir = home / "workers"
            log_dir.mkdir(parents=True, exist_ok=True)
            for location in workers:
                name = f"{location}-{os.uname().nodename}"
                inst.workers[location] = pools.start_worker(
                    location, name, dict(worker_env or {}, PREFECT_API_URL=api_url),
                    log_path=log_dir / f"{location}.log",
                )
                say(f"worker {name} serves pool {pools.POOLS[location]}")
    except BaseException as exc:
        inst.stop()
        from vmkeep.runtime.api_calls import raise_if_unreachable

        with _api_env(api_url):  # --api-url of a server that is not there
            raise_if_unreachable(
                exc, "start that server, or leave --api-url out to start one here")
        raise
    return inst


def wait(inst: Installation, say: Any = print) -> None:
    """Block until SIGINT/SIGTERM or until a worker dies; then stop everything owned."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    say(f"Prefect UI: {inst.ui_url}   (Ctrl-C stops the workers and the server started here)")
    try:
        while not stop.wait(1.0):
            dead = [loc for loc, p in inst.workers.items() if p.poll() is not None]
            if dead:
                say(f"worker(s) exited: {', '.join(dead)}")
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        inst.stop()
