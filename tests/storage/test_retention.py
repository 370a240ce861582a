"""Retention policy (forget): restic-style keep rules, checked by properties and examples."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmkeep.storage.retention import BUCKETS, Policy, apply_policy, parse_duration


@dataclass(frozen=True)
class P:
    id: str
    name: str
    kind: str
    time: datetime


EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
points_st = st.lists(
    st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 3 * 365 * 24 * 60)),
    max_size=60,
    unique_by=lambda t: t,
).map(
    lambda rows: [
        P(f"{i:064x}", name, "image", EPOCH + timedelta(minutes=m))
        for i, (name, m) in enumerate(rows)
    ]
)
policy_st = st.builds(
    Policy,
    last=st.integers(0, 5),
    hourly=st.integers(0, 5),
    daily=st.integers(0, 5),
    weekly=st.integers(0, 5),
    monthly=st.integers(0, 5),
    yearly=st.integers(0, 3),
    within=st.none() | st.integers(0, 90).map(lambda d: timedelta(days=d)),
)


@dataclass(frozen=True)
class VmPoint(P):
    meta: dict[str, str]


def test_two_vms_sharing_a_name_are_two_groups() -> None:
    """VM names are unique per vSphere folder only: ``/DC1/vm/teamA/twin`` and
    ``/DC1/vm/teamB/twin`` back up into one repository under one name; each VM keeps what the
    policy promises it (grouped by instance UUID), not a share of it."""
    points = [
        VmPoint(f"{i:064x}", "twin", "vm", EPOCH + timedelta(hours=i),
                {"instance_uuid": "5012-a" if i % 2 else "5012-b"})
        for i in range(8)
    ]
    decisions = apply_policy(points, Policy(last=2))
    kept_ids = {d.point.id for d in decisions if d.keep}
    assert kept_ids == {points[i].id for i in (7, 5, 6, 4)}  # two of each VM
    # one VM's points, renamed or not, stay one group per name as before
    same_vm = [VmPoint(p.id, p.name, "vm", p.time, {"instance_uuid": "5012-a"}) for p in points]
    assert {d.point.id for d in apply_policy(same_vm, Policy(last=2)) if d.keep} == {
        points[7].id, points[6].id}


def kept(points: list[P], policy: Policy) -> set[str]:
    return {d.point.id for d in apply_policy(points, policy) if d.keep}


def newest_first(points: list[P], name: str) -> list[P]:
    return sorted((p for p in points if p.name == name), key=lambda p: (p.time, p.id), reverse=True)


@settings(max_examples=200, deadline=None)
@given(points_st, policy_st)
def test_every_point_decided_once_and_newest_kept(points: list[P], policy: Policy) -> None:
    decisions = apply_policy(points, policy)
    assert sorted(d.point.id for d in decisions) == sorted(p.id for p in points)
    keep = {d.point.id for d in decisions if d.keep}
    for name in ("a", "b"):
        group = newest_first(points, name)
        if group:
            assert group[0].id in keep
    for d in decisions:
        assert d.keep == bool(d.reasons)


@settings(max_examples=200, deadline=None)
@given(points_st, policy_st, st.sampled_from(["last", *BUCKETS]), st.integers(1, 3))
def test_more_generous_policies_keep_more(
    points: list[P], policy: Policy, rule: str, extra: int
) -> None:
    bigger = Policy(**{**policy.__dict__, rule: getattr(policy, rule) + extra})
    assert kept(points, policy) <= kept(points, bigger)


@settings(max_examples=200, deadline=None)
@given(points_st, st.integers(1, 8), st.sampled_from(list(BUCKETS)))
def test_bucket_rules_keep_the_newest_of_the_n_latest_buckets(
    points: list[P], n: int, rule: str
) -> None:
    keep = kept(points, Policy(**{rule: n}))
    bucket_of = BUCKETS[rule]
    expected = set()
    for name in ("a", "b"):
        group = newest_first(points, name)
        seen: list[object] = []
        for p in group:
            b = bucket_of(p.time)
            if b not in seen:
                seen.append(b)
                if len(seen) <= n:
                    expected.add(p.id)
        if group:
            expected.add(group[0].id)
    assert keep == expected


@settings(max_examples=200, deadline=None)
@given(points_st, st.integers(0, 10))
def test_last_n_and_within(points: list[P], n: int) -> None:
    keep = kept(points, Policy(last=n))
    for name in ("a", "b"):
        group = newest_first(points, name)
        assert {p.id for p in group} & keep == {p.id for p in group[: max(n, 1)]}
    window = timedelta(days=30)
    keep = kept(points, Policy(within=window))
    for name in ("a", "b"):
        group = newest_first(points, name)
        for p in group:
            assert (p.id in keep) == (p.time >= group[0].time - window)


def test_restic_like_example() -> None:
    days = [EPOCH + timedelta(days=d, hours=h) for d in range(60) for h in (1, 13)]
    points = [P(f"{i:064x}", "vm", "vm", t) for i, t in enumerate(days)]
    decisions = apply_policy(points, Policy(last=3, daily=7, weekly=4, monthly=2))
    keep = [d for d in decisions if d.keep]
    times = sorted(d.point.time for d in keep)
    # 7 daily points (the 13:00 one of each of the last 7 days) + 3 last (2 of them the same)
    assert len([t for t in times if t >= EPOCH + timedelta(days=53)]) == 8
    assert {d.point.time.month for d in keep} == {1, 2}  # monthly reaches back into January
    assert datetime(2024, 1, 31, 13, tzinfo=UTC) in times
    assert not any(d.keep for d in decisions if d.point.time < EPOCH + timedelta(days=30))


def test_kinds_and_names_are_separate_groups() -> None:
    t = EPOCH
    points = [P("1" * 64, "x", "image", t), P("2" * 64, "x", "files", t + timedelta(hours=1))]
    assert kept(points, Policy(last=1)) == {"1" * 64, "2" * 64}


def test_parse_duration() -> None:
    assert parse_duration("24h") == timedelta(hours=24)
    assert parse_duration("1y2w3d4h5m6s") == timedelta(days=365 + 14 + 3, seconds=4 * 3600 + 306)
    assert parse_duration("0s") == timedelta(0)
    for bad in ("", "3", "3x", "h", "1d garbage"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    assert parse_duration("1000y") == timedelta(days=365_000)  # now ± this is still a date
    for too_long in ("1001y", "999999999y", "9" * 30 + "s"):  # was OverflowError, a traceback
        with pytest.raises(ValueError, match="too long"):
            parse_duration(too_long)
