"""Wait for vSphere tasks by polling a few task properties, with a timeout.

We do not use pyVim's ``WaitForTask``: it reads whole ``TaskInfo`` objects, and a ``TaskInfo``
whose ``entity`` is a removed snapshot breaks both stock vcsim (a server panic) and pyVmomi's
deserialiser (``entity`` typed ``ManagedEntity``).  :func:`wait_for_task` asks the property
collector for ``info.state``, ``info.error`` and ``info.result`` only, through
:meth:`Session.call` (idempotent: re-login and drop retries apply).  A timeout raises a transient
:class:`TaskTimeout`; the task keeps running on the server (the caller decides whether to cancel).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vmkeep.vsphere.connection import Session
from vmkeep.vsphere.errors import TaskFailed, TaskTimeout, fault_name, wsdl_fault_type

_PATHS = ["info.state", "info.error", "info.result", "info.descriptionId"]


def task_properties(session: Session, task: Any) -> dict[str, Any]:
    """Current ``info.state``/``info.error``/``info.result`` of ``task`` as a dict."""
    from pyVmomi import vim, vmodl

    pc = vmodl.query.PropertyCollector
    spec = pc.FilterSpec(
        objectSet=[pc.ObjectSpec(obj=task)],
        propSet=[pc.PropertySpec(type=vim.Task, pathSet=_PATHS)],
    )
    collector = session.content.propertyCollector
    result = session.call(
        collector.RetrieveContents, [spec], idempotent=True, what="task state"
    )
    props: dict[str, Any] = {}
    for obj in result or []:
        for prop in obj.propSet:
            props[prop.name] = prop.val
    return props


def wait_for_task(
    session: Session,
    task: Any,
    *,
    timeout: float = 3600.0,
    poll: float = 0.2,
    max_poll: float = 2.0,
    what: str | None = None,
    on_wait: Callable[[float], None] | None = None,
    report_every: float = 600.0,
) -> Any:
    """Block until ``task`` succeeds and return its ``info.result``.

    Raises :class:`TaskFailed` with the fault's class name and message (``fault`` attribute holds
    the original fault for callers that need to branch on its type, e.g. quiesce errors), or
    :class:`TaskTimeout`.  Polling backs off from ``poll`` to ``max_poll`` seconds; while the
    task runs, ``on_wait(seconds waited)`` is called every ``report_every`` seconds (for a log
    line on long tasks).
    """
    label = what or getattr(task, "_moId", "task")
    started = time.monotonic()
    deadline = started + timeout
    reported = started
    delay = poll
    while True:
        props = task_properties(session, task)
        state = props.get("info.state")
        if state == "success":
            return props.get("info.result")
        if state == "error":
            fault = props.get("info.error")
            err = TaskFailed(label, fault_name(fault) if fault is not None else "unknown fault")
            err.fault = fault
            err.fault_type = wsdl_fault_type(fault)
            raise err
        now = time.monotonic()
        if now >= deadline:
            raise TaskTimeout(label, timeout)
        if on_wait is not None and now - reported >= report_every:
            reported = now
            on_wait(now - started)
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(max_poll, delay * 1.5)
