"""Whether this process runs flows through Prefect — decided before Prefect is imported.

Importing Prefect costs seconds, so the CLI decides first: flows are orchestrated when asked
(``--prefect``) or when Prefect's settings name an API (:func:`vmkeep.runtime.api_configured`:
environment, profile, ``.env``, ``prefect.toml``); otherwise jobs run in-process.
"""

from __future__ import annotations

from vmkeep.runtime.settings import api_configured, prepare_prefect_env

#: kept for callers of the old name
prefect_api_configured = api_configured


def choose(orchestrate: bool | None) -> bool:
    """Decide for this process: ``orchestrate`` when given, else whether Prefect's settings name an
    API.  Orchestrated: Prefect's environment is prepared (quiet logging, no analytics)."""
    decided = api_configured() if orchestrate is None else orchestrate
    if decided:
        prepare_prefect_env()
    return decided
