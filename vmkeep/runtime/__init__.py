"""The runtime port between vmkeep's jobs and whatever runs them (see :mod:`.base`).

``LocalRuntime`` (:mod:`.local`) runs a job in-process; ``PrefectRuntime``
(:mod:`.prefect_runtime`, imported only when needed: Prefect takes seconds to import) runs it
inside a Prefect flow run.  :func:`api_configured` (:mod:`.settings`) tells which one a CLI
invocation uses.
"""

from vmkeep.runtime.base import (
    DEFAULT_RETRY,
    NO_RETRY,
    Cancelled,
    Progress,
    RetryPolicy,
    Runtime,
    step_def,
)
from vmkeep.runtime.local import LocalRuntime
from vmkeep.runtime.settings import api_configured

__all__ = [
    "DEFAULT_RETRY",
    "NO_RETRY",
    "Cancelled",
    "LocalRuntime",
    "Progress",
    "RetryPolicy",
    "Runtime",
    "api_configured",
    "step_def",
]
