"""Whether this process runs flows through Prefect — decided before Prefect is imported.

Importing Prefect costs seconds, so the CLI decides first: flows are orchestrated when asked
(``--prefect``) or when Prefect's settings name an API (:func:`vmkeep.runtime.api_configured`:
environment, profile, ``.env``, ``prefect.toml``); otherwise jobs run in-process.
"""

from __future__ import annotations

import os
import sys

from vmkeep.runtime.settings import api_configured, prepare_prefect_env

#: kept for callers of the old name
prefect_api_configured = api_configured


def choose(orchestrate: bool | None) -> bool:
    """Decide for this process.  Direct: the legacy task decorators (``vmkeep.tasks.runtime``,
    still used by the flows not yet rewritten as jobs) are told not to import Prefect."""
    decided = api_configured() if orchestrate is None else orchestrate
    if not decided and "vmkeep.tasks.runtime" not in sys.modules:
        os.environ["VMKEEP_PREFECT"] = "0"
    if decided:
        prepare_prefect_env()
    return decided
