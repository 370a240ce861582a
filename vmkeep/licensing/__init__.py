"""vmkeep.licensing: the licence model (with the community tier), planner, signed licence files,
workload identities, the usage ledger, and the licence decision (:mod:`vmkeep.licensing.gate`,
the one place a backup is allowed or refused).  Plain Python: the standard library,
``cryptography``, :mod:`vmkeep.errors` / :mod:`vmkeep.clock` and the state directory of
:mod:`vmkeep.storage.known_state` (see docs/licensing.md).
"""

from vmkeep.licensing.check import LicenceDecision, check_licence, licence_status
from vmkeep.licensing.errors import LicenceError, LicenceRefused
from vmkeep.licensing.gate import authorize, usage_report
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
    "authorize",
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
    "usage_report",
]
