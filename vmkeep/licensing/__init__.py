"""vmkeep.licensing: the licence model, planner, signed licence files, usage counting and the
licence decision.  Plain Python: imports only the standard library, ``cryptography`` and
:mod:`vmkeep.errors` / :mod:`vmkeep.clock` (see docs/licensing.md).
"""

from vmkeep.licensing.check import LicenceDecision, check_licence, licence_status
from vmkeep.licensing.errors import LicenceError, LicenceRefused
from vmkeep.licensing.licence_file import Licence, parse_licence
from vmkeep.licensing.model import Requirements, Sku, Usage, requirements
from vmkeep.licensing.planner import Plan, parse_environment, plan
from vmkeep.licensing.store import LicenceState, install, load_state
from vmkeep.licensing.usage import PlannedVm, ProtectedItem, run_usage, usage_from_items

__all__ = [
    "Licence",
    "LicenceDecision",
    "LicenceError",
    "LicenceRefused",
    "LicenceState",
    "Plan",
    "PlannedVm",
    "ProtectedItem",
    "Requirements",
    "Sku",
    "Usage",
    "check_licence",
    "install",
    "licence_status",
    "load_state",
    "parse_environment",
    "parse_licence",
    "plan",
    "requirements",
    "run_usage",
    "usage_from_items",
]
