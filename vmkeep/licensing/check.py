"""The licence decision for one run.  Pure: no I/O, no clock (``now`` is an argument).

:func:`check_licence` takes the installed licence (or the error that made it unusable), what the
catalog says is protected inside the retention window, and what the run would add, and returns a
:class:`LicenceDecision`.  Rules:

* Read-only operations (:data:`READ_ONLY_OPERATIONS`: restore, list, ls, check, mount …) are always
  allowed, licence or not.
* A backup is refused when there is no usable licence: none installed, tampered, signed by
  another key, malformed, expired or not yet valid.
* A backup is refused when, with the run added to the catalog's usage, a meter (backup clients,
  ESX hosts, guest seats, SAN remote devices, autoloader slots) exceeds the licence *and the run
  adds to it* (a new client, host, guest, data mover or slots).  A meter already over the licence
  that the run does not grow (e.g. the licence was renewed smaller) only warns: backups of
  machines already protected keep running.
* The refusal names every missing SKU and how many (missing ESX Server Clients are counted before
  add-ons, as each brings 5 seats).
* Warnings: any meter at >= 90 % (:data:`WARN_RATIO`), any meter over, expiry within
  :data:`EXPIRY_WARNING_DAYS` days.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from vmkeep.licensing.errors import LicenceError, LicenceNotInstalled, LicenceRefused
from vmkeep.licensing.licence_file import Licence
from vmkeep.licensing.model import (
    Meter,
    Requirements,
    Sku,
    Usage,
    meters,
    missing,
    used_per_sku,
)

WARN_RATIO = 0.9
EXPIRY_WARNING_DAYS = 30
READ_ONLY_OPERATIONS = frozenset({"restore", "list", "ls", "check", "mount", "browse", "status"})


@dataclass(frozen=True)
class LicenceDecision:
    """The outcome of :func:`check_licence`.

    ``meters`` are the usage with the run added, against the licence (zero counts when there is no
    usable licence); ``used_before`` the catalog's usage per meter; ``missing`` what to buy for
    the run to pass (SKU -> count); ``shortfall`` what to buy to cover all usage; ``refusal`` the
    error to raise when not ``allowed``.
    """

    operation: str
    allowed: bool
    checked_at: datetime
    licence: Licence | None
    problem: LicenceError | None
    meters: tuple[Meter, ...]
    used_before: Mapping[str, int]
    missing: Mapping[Sku, int] = field(default_factory=dict)
    refusal: LicenceRefused | None = None
    warnings: tuple[str, ...] = ()
    shortfall: Mapping[Sku, int] = field(default_factory=dict)
    used_skus: Requirements = field(default_factory=Requirements)
    licensed_skus: Requirements = field(default_factory=Requirements)

    @property
    def compliant(self) -> bool:
        """A usable licence that covers all usage (status exits 0 only then)."""
        return self.problem is None and not self.shortfall

    @property
    def needs_warning(self) -> bool:
        return bool(self.warnings)

    def raise_if_refused(self) -> None:
        if self.refusal is not None:
            raise self.refusal

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready (the shape of ``vmkeep license status --json``)."""
        return {
            "operation": self.operation,
            "allowed": self.allowed,
            "checked_at": self.checked_at.isoformat(),
            "licence": self.licence.as_dict() if self.licence else None,
            "problem": self.problem.get_message() if self.problem else None,
            "days_left": self.licence.days_left(self.checked_at) if self.licence else None,
            "meters": [
                {**m.as_dict(), "used_before": self.used_before.get(m.name, 0)} for m in self.meters
            ],
            "skus": {
                sku.value: {
                    "title": sku.label,
                    "used": self.used_skus[sku],
                    "licensed": self.licensed_skus[sku],
                }
                for sku in Sku
            },
            "missing": {sku.value: n for sku, n in self.missing.items()},
            "shortfall": {sku.value: n for sku, n in self.shortfall.items()},
            "compliant": self.compliant,
            "refusal": self.refusal.get_message() if self.refusal else None,
            "warnings": list(self.warnings),
        }


def _describe_missing(missing_skus: Mapping[Sku, int]) -> str:
    return ", ".join(f"{n}× {sku.label} ({sku.value})" for sku, n in missing_skus.items())


def check_licence(
    licence: Licence | LicenceError | None,
    current_usage: Usage,
    run_additions: Usage,
    now: datetime,
    operation: str = "backup",
) -> LicenceDecision:
    """Decide whether ``operation`` may run; see the module docstring for the rules."""
    problem: LicenceError | None
    if licence is None:
        problem = LicenceNotInstalled("the configured location")
        valid: Licence | None = None
    elif isinstance(licence, LicenceError):
        problem, valid = licence, None
    else:
        problem, valid = licence.problem_at(now), licence
    licensed = valid.counts if valid is not None and problem is None else Requirements()
    total = current_usage.union(run_additions)
    after = meters(total, licensed)
    before = {m.name: current_usage.count(m.name) for m in after}
    warnings: list[str] = []

    if valid is not None and problem is None:
        left = valid.days_left(now)
        if left < EXPIRY_WARNING_DAYS:
            warnings.append(
                f"licence {valid.licence_id} expires on {valid.expires.isoformat()}"
                f" ({left} day(s) left)"
            )
    refusing = [m for m in after if m.over and m.used > before[m.name]]
    if problem is None:
        for m in after:
            if m.over and m not in refusing:
                warnings.append(
                    f"{m.title.lower()}: {m.used} in use, {m.licensed} licensed"
                    " (over the licence; only new ones are refused)"
                )
            elif m.licensed and m.ratio >= WARN_RATIO:
                warnings.append(
                    f"{m.title.lower()}: {m.used} of {m.licensed} in use ({100 * m.ratio:.0f} %)"
                )

    read_only = operation in READ_ONLY_OPERATIONS
    short = missing(total, licensed)
    refusing_skus = {m.sku for m in refusing}
    need = {sku: n for sku, n in short.items() if sku in refusing_skus}
    refusal: LicenceRefused | None = None
    if not read_only:
        if problem is not None:
            refusal = LicenceRefused(operation, problem.get_message())
        elif need:
            detail = "; ".join(
                f"{m.title.lower()} {m.used} needed, {m.licensed} licensed" for m in refusing
            )
            refusal = LicenceRefused(
                operation,
                f"missing {_describe_missing(need)} ({detail})",
                {sku.value: n for sku, n in need.items()},
            )
    return LicenceDecision(
        operation=operation,
        allowed=refusal is None,
        checked_at=now,
        licence=valid,
        problem=problem,
        meters=after,
        used_before=before,
        missing=need if problem is None else {},
        refusal=refusal,
        warnings=tuple(warnings),
        shortfall=short if problem is None else {},
        used_skus=used_per_sku(total, licensed),
        licensed_skus=licensed,
    )


def licence_status(
    licence: Licence | LicenceError | None, usage: Usage, now: datetime
) -> LicenceDecision:
    """The licence against current usage: a check of an empty backup run."""
    return check_licence(licence, usage, Usage(), now, operation="backup")
