"""Storage latency control: no new snapshot on a datastore that is already slow.

A backup adds load to the datastores it reads from — the snapshot's delta disks, and the reads
themselves.  When a datastore is already answering slowly, that load is felt by every VM on it.
Veeam's "storage latency control" stops assigning new tasks to a datastore whose latency is above
a limit (20 ms by default) until it recovers; vmkeep does the same before each VM's snapshot:

* the latency is what vCenter's performance manager reports for the VM's host: the newest
  realtime sample of ``datastore.totalReadLatency.average`` and
  ``datastore.totalWriteLatency.average`` (ms), the larger of the two, per datastore the snapshot
  grows on (:func:`~vmkeep.vsphere.datastore_space.snapshot_datastores`);
* at or above ``datastore_latency_stop_ms`` (``VMKEEP_DATASTORE_LATENCY_STOP_MS``, default 20;
  ``0``: off) the VM waits, asking again every ``datastore_latency_poll_s`` (30 s), for at most
  ``datastore_latency_wait_s`` (30 min); then it is backed up anyway, with a warning naming the
  datastore and its latency (a backup that never starts protects nothing);
* a datastore whose counters answer nothing (no realtime statistics, a host that does not report
  the instance) is not judged; a performance manager that refuses the query is a warning.

While the disks are read, :class:`ReadThrottle` goes on looking (every ``poll_s``) and slows the
reads down while a datastore answers at or above ``datastore_latency_throttle_ms`` (30 ms): the
second half of Veeam's control, "throttle I/O of existing tasks".

Counters are matched by name (``group.name.rollup``), their instance by the last element of the
datastore's ``summary.url`` (a VMFS datastore's UUID).  :func:`wait_while_busy` takes the sleep
function so that tests need no wall-clock time.  Read-only.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vmkeep.vsphere import datastore_lookup
from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import VSphereError
from vmkeep.vsphere.inventory import VMInfo

COUNTERS = ("datastore.totalReadLatency.average", "datastore.totalWriteLatency.average")


@dataclass(frozen=True)
class LatencyPolicy:
    """When a datastore counts as busy, and how long a VM waits for it."""

    stop_ms: float = 20.0
    wait_s: float = 1800.0
    poll_s: float = 30.0

    @property
    def enabled(self) -> bool:
        return self.stop_ms > 0


def instances(session: Session, names: Sequence[str], near: Any) -> dict[str, str]:
    """Datastore name (in ``near``'s datacenter: the VM's) → the instance its performance
    counters carry (one property query)."""
    wanted = set(names)
    out: dict[str, str] = {}
    for _ref, p in datastore_lookup.datastores_near(session, near, ["summary.url"]):
        name = str(p.get("name", ""))
        url = str(p.get("summary.url") or "").rstrip("/")
        if name in wanted and url:
            out[name] = url.rsplit("/", 1)[-1]
    return out


def _watched(
    session: Session, vm: VMInfo, datastores: Sequence[str]
) -> tuple[object, dict[str, str]]:
    """The VM's host now and ``{counter instance: datastore name}`` of ``datastores``."""
    names = instances(session, datastores, vm.ref)
    return session.get(vm.ref, "runtime.host"), {inst: n for n, inst in names.items()}


#: counter keys per vCenter/ESXi endpoint: its counter table is fixed, and reading it (hundreds
#: of counters) costs ~80 ms — once per process and endpoint
_KEYS: dict[tuple[str, int], dict[str, int]] = {}


def counter_keys(session: Session) -> dict[str, int]:
    """``group.name.rollup`` → counter key, for :data:`COUNTERS` (cached per endpoint)."""
    endpoint = (session.host, session.port)
    if endpoint not in _KEYS:
        found: dict[str, int] = {}
        for c in session.get(session.content.perfManager, "perfCounter") or []:
            name = f"{c.groupInfo.key}.{c.nameInfo.key}.{c.rollupType}"
            if name in COUNTERS:
                found[name] = int(c.key)
        _KEYS[endpoint] = found
    return _KEYS[endpoint]


def read_latency(session: Session, host: object, by_instance: Mapping[str, str]) -> dict[str, int]:
    """Datastore name → its latency in ms on ``host`` now (the larger of read and write; names
    whose instance the host does not report are absent).  ``by_instance``: instance → name."""
    from pyVmomi import vim

    keys = counter_keys(session)
    if not keys or not by_instance:
        return {}
    spec = vim.PerformanceManager.QuerySpec(
        entity=host, intervalId=20, maxSample=1,
        metricId=[vim.PerformanceManager.MetricId(counterId=k, instance="*")
                  for k in keys.values()],
    )
    answer = session.call(session.content.perfManager.QueryPerf, [spec], idempotent=True,
                          what="datastore latency") or []
    out: dict[str, int] = {}
    for metric in answer:
        for series in getattr(metric, "value", None) or []:
            name = by_instance.get(str(series.id.instance))
            values = list(getattr(series, "value", None) or [])
            if name is not None and values:
                out[name] = max(out.get(name, 0), int(values[-1]))
    return out


def busy(latencies: Mapping[str, int], stop_ms: float) -> dict[str, int]:
    """The datastores at or above ``stop_ms``. Pure."""
    return {n: ms for n, ms in sorted(latencies.items()) if ms >= stop_ms}


def describe(slow: Mapping[str, int]) -> str:
    """``datastore1 (45 ms), datastore2 (31 ms)``."""
    return ", ".join(f"{n} ({ms} ms)" for n, ms in slow.items())


def wait_while_busy(
    session: Session,
    vm: VMInfo,
    datastores: Sequence[str],
    policy: LatencyPolicy,
    *,
    sleep: Callable[[float], None] | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[float, list[str]]:
    """Wait while a datastore of ``datastores`` is busy on ``vm``'s host (see the module doc);
    returns the seconds waited and the warnings.  ``sleep``: default :func:`pause`."""
    if not policy.enabled or not datastores:
        return 0.0, []
    waited = 0.0
    try:
        host, by_instance = _watched(session, vm, datastores)
        while True:
            slow = busy(read_latency(session, host, by_instance), policy.stop_ms)
            if not slow:
                return waited, []
            if waited >= policy.wait_s:
                return waited, [
                    f"datastore latency {describe(slow)} at or above {policy.stop_ms:g} ms "
                    f"(VMKEEP_DATASTORE_LATENCY_STOP_MS) after waiting {waited:.0f} s: backed up "
                    "anyway"]
            if log is not None:
                log(f"{vm.name}: datastore latency {describe(slow)} at or above "
                    f"{policy.stop_ms:g} ms: waiting {policy.poll_s:g} s")
            step = min(policy.poll_s, policy.wait_s - waited)
            (sleep or pause)(step)
            waited += step
    except VSphereError as exc:
        return waited, [f"datastore latency not read ({exc.get_message()}): not waited for"]


def pause(seconds: float) -> None:
    """The wait between two looks at the latency (a seam for tests)."""
    time.sleep(seconds)


@dataclass(frozen=True)
class ThrottlePolicy:
    """When a VM's running reads slow down, how often they look, and how slow they may get."""

    throttle_ms: float = 30.0
    poll_s: float = 30.0
    floor_bytes: float = 10 * 1024 * 1024

    @property
    def enabled(self) -> bool:
        return self.throttle_ms > 0


class ReadThrottle:
    """Storage latency control while a VM's disks are read (Veeam: "throttle I/O of existing
    tasks at 30 ms").

    ``with ReadThrottle(session, vm, datastores, policy) as throttle:`` looks at the datastores'
    latency on the VM's host at once and then every ``poll_s`` on a daemon thread, and tells
    ``throttle.pacer`` (an :class:`~vmkeep.storage.rate_limit.AdaptivePacer`, to be passed as the
    disks' read limit) whether one is at or above ``throttle_ms``: the reads are halved in speed
    per slow look, down to ``floor_bytes``/s, and doubled per calm one until unthrottled.  A look
    that fails stops the watching (the reads go on unthrottled) with a warning; leaving the block
    stops the thread.  :meth:`summary` says what happened (None: never slow).
    """

    def __init__(
        self,
        session: Session,
        vm: VMInfo,
        datastores: Sequence[str],
        policy: ThrottlePolicy,
        *,
        log: Callable[[str], None] | None = None,
    ) -> None:
        from vmkeep.storage.rate_limit import AdaptivePacer

        self.session, self.vm, self.policy, self._log = session, vm, policy, log
        self.datastores = list(datastores)
        self.pacer = AdaptivePacer(policy.floor_bytes)
        self.peak: dict[str, int] = {}
        self.warnings: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._host: object = None
        self._by_instance: dict[str, str] = {}

    def __enter__(self) -> ReadThrottle:
        if not self.policy.enabled or not self.datastores:
            return self
        try:
            self._host, self._by_instance = _watched(self.session, self.vm, self.datastores)
        except VSphereError as exc:
            self.warnings.append(f"datastore latency not read ({exc.get_message()}): reads not "
                                 "throttled")
            return self
        if self.look():
            self._thread = threading.Thread(target=self._watch, name="vmkeep-latency",
                                             daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.pacer.finish()

    def _watch(self) -> None:
        while not self._stop.wait(self.policy.poll_s):
            if not self.look():
                return

    def look(self) -> bool:
        """One look at the latency and the pacer told; False when it could not be read."""
        try:
            latencies = read_latency(self.session, self._host, self._by_instance)
        except VSphereError as exc:
            self.warnings.append(f"datastore latency not read while reading "
                                 f"({exc.get_message()}): reads no longer throttled")
            self.pacer.release()
            return False
        slow = busy(latencies, self.policy.throttle_ms)
        for name, ms in slow.items():
            self.peak[name] = max(self.peak.get(name, 0), ms)
        was = self.pacer.rate
        rate = self.pacer.observe(bool(slow))
        if self._log is not None and (was is None) != (rate is None):
            self._log(f"{self.vm.name}: datastore latency {describe(slow)}: reads throttled to "
                      f"{rate / 1024:.0f} KiB/s" if rate is not None else
                      f"{self.vm.name}: datastore latency below "
                      f"{self.policy.throttle_ms:g} ms again: reads at full speed")
        return True

    def summary(self) -> dict[str, Any] | None:
        """``{throttle_ms, slow_looks, throttled_s, lowest_kib_s, peak_ms}`` once the reads were
        throttled, else None."""
        if not self.pacer.slow_looks:
            return None
        lowest = self.pacer.lowest
        return {
            "throttle_ms": self.policy.throttle_ms,
            "slow_looks": self.pacer.slow_looks,
            "throttled_s": round(self.pacer.throttled_s, 3),
            "lowest_kib_s": round(lowest / 1024) if lowest is not None else None,
            "peak_ms": dict(sorted(self.peak.items())),
        }
