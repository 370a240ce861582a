"""Whether this process runs flows through Prefect — decided before Prefect is imported.

Importing Prefect costs seconds, so the CLI decides first (see :mod:`vmkeep.tasks.runtime`):
flows are orchestrated when asked (``--prefect``) or when a Prefect API URL is configured in the
environment or in the active Prefect profile; otherwise they run directly in-process.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path


def prefect_api_configured() -> bool:
    """True when a Prefect API URL is set, in the environment or the active Prefect profile."""
    if os.environ.get("PREFECT_API_URL"):
        return True
    home = Path(os.environ.get("PREFECT_HOME", Path.home() / ".prefect"))
    profiles = Path(os.environ.get("PREFECT_PROFILES_PATH", home / "profiles.toml"))
    try:
        data = tomllib.loads(profiles.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return False
    active = os.environ.get("PREFECT_PROFILE") or data.get("active", "ephemeral")
    return bool(data.get("profiles", {}).get(active, {}).get("PREFECT_API_URL"))


def choose(orchestrate: bool | None) -> bool:
    """Decide for this process; in direct mode Prefect is never imported by vmkeep's flows."""
    decided = prefect_api_configured() if orchestrate is None else orchestrate
    if not decided and "vmkeep.tasks.runtime" not in __import__("sys").modules:
        os.environ["VMKEEP_PREFECT"] = "0"
    if decided:
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("DO_NOT_TRACK", "1")
    return decided
