"""Retention policy: which restore points ``forget`` keeps (pure logic, no I/O).

Semantics follow restic's ``forget`` (and PBS's prune options), per group of restore points with
the same ``(kind, name)`` — one VM, image or file source; VM points also by their VM's instance
UUID (``meta.instance_uuid``, the key of the VM's chain), since VM names are unique per vSphere
folder only and two VMs may share one (:func:`group_of`):

* points are considered newest first (by time, then id);
* ``last=N`` keeps the N newest points;
* ``hourly/daily/weekly/monthly/yearly=N`` keep, for each of the N most recent hours / days /
  ISO weeks / months / years that have a point, the newest point in it (times in UTC);
* ``within=D`` keeps every point not older than D before the group's **newest** point (not "now":
  a source whose backups stopped does not lose everything);
* a point kept by any rule is kept; all others are forgotten;
* the newest point of every group is always kept (forgetting it needs an explicit id);
* an empty policy keeps everything (the CLI refuses it rather than guessing).

The result lists every input point exactly once, with the reasons it was kept.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol


class PointLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def time(self) -> datetime: ...


BUCKETS: dict[str, Callable[[datetime], Any]] = {
    "hourly": lambda t: (t.year, t.month, t.day, t.hour),
    "daily": lambda t: (t.year, t.month, t.day),
    "weekly": lambda t: tuple(t.isocalendar())[:2],
    "monthly": lambda t: (t.year, t.month),
    "yearly": lambda t: t.year,
}


@dataclass(frozen=True)
class Policy:
    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: timedelta | None = None

    def empty(self) -> bool:
        counts = (self.last, self.hourly, self.daily, self.weekly, self.monthly, self.yearly)
        return not any(counts) and self.within is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: v for k, v in self.__dict__.items() if k != "within" and v}
        if self.within is not None:
            out["within"] = str(self.within)
        return out


@dataclass
class Decision:
    point: Any
    keep: bool
    reasons: list[str] = field(default_factory=list)


def _utc(t: datetime) -> datetime:
    from datetime import UTC

    return t.astimezone(UTC) if t.tzinfo else t.replace(tzinfo=UTC)


def group_of(point: PointLike) -> tuple[str, str, str]:
    """The retention group of ``point``: its kind, its name and, for a VM point, its VM's
    instance UUID ("" for other points, and for VM points that record none)."""
    meta = getattr(point, "meta", None) or {}
    vm = str(meta.get("instance_uuid") or "") if point.kind == "vm" else ""
    return (point.kind, point.name, vm)


def apply_policy(points: Sequence[PointLike], policy: Policy) -> list[Decision]:
    """Decide for every point; see the module docstring.  Order: groups, newest first."""
    groups: dict[tuple[str, str, str], list[PointLike]] = defaultdict(list)
    for p in points:
        groups[group_of(p)].append(p)
    decisions: list[Decision] = []
    for key in sorted(groups):
        group = sorted(groups[key], key=lambda p: (_utc(p.time), p.id), reverse=True)
        decisions.extend(_apply_group(group, policy))
    return decisions


def _apply_group(group: list[PointLike], policy: Policy) -> list[Decision]:
    remaining = {name: getattr(policy, name) for name in BUCKETS}
    last_bucket: dict[str, Any] = {}
    left_last = policy.last
    newest = _utc(group[0].time)
    out = []
    for n, p in enumerate(group):
        t = _utc(p.time)
        reasons = []
        if n == 0:
            reasons.append("newest")
        if left_last > 0:
            reasons.append("last")
            left_last -= 1
        for name, bucket_of in BUCKETS.items():
            bucket = bucket_of(t)
            if remaining[name] > 0 and last_bucket.get(name, object()) != bucket:
                reasons.append(name)
                remaining[name] -= 1
                last_bucket[name] = bucket
        if policy.within is not None and t >= newest - policy.within:
            reasons.append("within")
        out.append(Decision(p, bool(reasons), reasons))
    return out


_UNITS = {
    "y": timedelta(days=365),
    "w": timedelta(weeks=1),
    "d": timedelta(days=1),
    "h": timedelta(hours=1),
    "m": timedelta(minutes=1),
    "s": timedelta(seconds=1),
}


#: the longest duration taken: anything a retention rule, grace or window means fits, and a
#: time this far from now is still a date (``datetime`` ends at year 9999)
MAX_DURATION = timedelta(days=1000 * 365)


def parse_duration(text: str) -> timedelta:
    """``"1y2w3d4h5m6s"``-style durations (y = 365 days, m = minutes), at most
    :data:`MAX_DURATION`; ``ValueError`` else."""
    text = text.strip().lower()
    parts = re.findall(r"(\d+)\s*([ywdhms])", text)
    if not parts or re.sub(r"(\d+)\s*([ywdhms])", "", text).strip():
        raise ValueError(f"not a duration: {text!r} (use e.g. 30d, 12h, 1y2w, 0s)")
    too_long = ValueError(f"duration too long: {text!r} (at most 1000y)")
    total = timedelta()
    try:
        for number, unit in parts:
            total += int(number) * _UNITS[unit]
    except OverflowError:  # beyond what a timedelta holds
        raise too_long from None
    if total > MAX_DURATION:
        raise too_long
    return total
