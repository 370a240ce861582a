"""Is a Prefect API configured?  Prefect's own settings loader decides.

Prefect reads its settings from the environment, the active profile (``profiles.toml``), a
``.env`` file, ``prefect.toml`` and ``[tool.prefect]`` in ``pyproject.toml`` of the working
directory.  :func:`api_configured` asks Prefect (``Settings().api.url``, read afresh) whenever
one of those sources could name an API URL; when none exists it answers ``False`` without
importing Prefect, which costs a second or more — the direct CLI path does not pay it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _mentions(path: Path, needle: str) -> bool:
    try:
        return needle in path.read_text(errors="replace")
    except OSError:
        return False


def could_be_configured(cwd: Path | None = None) -> bool:
    """True when some Prefect settings source exists that may set ``api.url`` (cheap check)."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    cwd = cwd or Path.cwd()
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect").expanduser()
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH") or home / "profiles.toml")
    return (
        _mentions(profiles.expanduser(), "PREFECT_API_URL")
        or _mentions(cwd / ".env", "PREFECT_API_URL")
        or _mentions(cwd / "prefect.toml", "url")
        or _mentions(cwd / "pyproject.toml", "tool.prefect")
    )


def api_configured() -> bool:
    """True when Prefect's settings (env, profile, .env, prefect.toml, pyproject) name an API."""
    if "PREFECT_API_URL" in os.environ:  # the environment overrides every other source
        return bool(os.environ["PREFECT_API_URL"])  # and reading it costs no Prefect import
    if not could_be_configured():
        return False
    from prefect.settings import Settings

    return bool(Settings().api.url)  # read now (the process's profile may have changed)


def prepare_prefect_env() -> None:
    """Quiet defaults for a process about to run flows (no telemetry from backup servers)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def in_prefect_run() -> bool:
    """True inside a Prefect flow or task run — whose parameters Prefect has recorded.

    Never imports Prefect: a process that has not imported it runs no Prefect run.
    """
    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext

    return FlowRunContext.get() is not None or TaskRunContext.get() is not None
