"""The licence decision for one run.  Pure: no I/O, no clock (``now`` is an argument).

:func:`check_licence` takes the installed licence (or the error that made it unusable), what the
catalog says is protected inside the retention window, and what the run would add, and returns a
:class:`LicenceDecision`.  Rules:

* Read-only operations (:data:`READ_ONLY_OPERATIONS`: restore, list, ls, check, mount …) are always
  allowed, licence or not.
* With **no licence installed** the community tier applies (:mod:`vmkeep.licensing.model`): a
  backup is allowed while everything protected, the run included, fits it (10 workloads, no SAN
  Remote Device, no autoloader slots); beyond it every backup is refused and the refusal names
  what the planner says to buy for the whole usage (a licence replaces the tier, it does not add
  to it).  There is no grace for machines already counted: an over-used community tier (say a
  licence was removed) refuses until a licence is installed or workloads age out of the window.
* A backup is refused when the installed licence is unusable: tampered, signed by another key,
  malformed, expired or not yet valid.  (Removing it falls back to the community tier.)
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
    COMMUNITY_WORKLOADS,
    Meter,
    Requirements,
    Sku,
    Usage,
    community_excess,
    community_meters,
    meters,
    missing,
    requirements,
    used_per_sku,
)

#: ``LicenceDecision.tier``: a valid licence, the community tier, or an unusable licence file
TIER_LICENSED, TIER_COMMUNITY, TIER_UNUSABLE = "licensed", "community", "unusable"

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
    tier: str = TIER_LICENSED

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
            "tier": self.tier,
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
    if licence is None or isinstance(licence, LicenceNotInstalled):
        return _community(current_usage, run_additions, now, operation)
    problem: LicenceError | None
    valid: Licence | None
    if isinstance(licence, LicenceError):
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
        tier=TIER_LICENSED if problem is None else TIER_UNUSABLE,
    )


def _community(current: Usage, run: Usage, now: datetime, operation: str) -> LicenceDecision:
    """The decision without a licence: the community tier (see the module docstring)."""
    total = current.union(run)
    after = community_meters(total)
    before = {m.name: current.count(m.name) for m in after}
    excess = community_excess(total)
    plan = requirements(total)
    buy = {sku: plan[sku] for sku in Sku if plan[sku]} if excess else {}
    warnings: list[str] = []
    refusal: LicenceRefused | None = None
    if excess and operation not in READ_ONLY_OPERATIONS:
        refusal = LicenceRefused(
            operation,
            "no licence is installed and the community tier does not cover it ("
            + "; ".join(excess)
            + f"); `vmkeep license plan` says to buy, for all {total.workloads} workload(s):"
            f" {_describe_missing(buy)}; install it with `vmkeep license install FILE`",
            {sku.value: n for sku, n in buy.items()},
        )
    elif excess:
        warnings.append("over the community tier: " + "; ".join(excess))
    elif total.workloads >= WARN_RATIO * COMMUNITY_WORKLOADS:
        warnings.append(
            f"community tier: {total.workloads} of {COMMUNITY_WORKLOADS} workloads in use"
        )
    return LicenceDecision(
        operation=operation,
        allowed=refusal is None,
        checked_at=now,
        licence=None,
        problem=None,
        meters=after,
        used_before=before,
        missing=buy if refusal is not None else {},
        refusal=refusal,
        warnings=tuple(warnings),
        shortfall=buy,
        used_skus=used_per_sku(total, Requirements()),
        licensed_skus=Requirements(),
        tier=TIER_COMMUNITY,
    )


def licence_status(
    licence: Licence | LicenceError | None, usage: Usage, now: datetime
) -> LicenceDecision:
    """The licence against current usage: a check of an empty backup run."""
    return check_licence(licence, usage, Usage(), now, operation="backup")
