"""Job reports of flow runs: where they go on a worker, the run's page, the crash report.

The Prefect side of :mod:`vmkeep.runtime.notify` (which knows no Prefect):

* :func:`notify_config` — the worker's environment (``VMKEEP_NOTIFY``/``_FILE``/``_ON``), else
  the Secret block :data:`vmkeep.runtime.notify.BLOCK` that ``vmkeep serve`` saves, else
  nowhere (no block: ``None``; an unreadable block: a warning, ``None``);
* :func:`run_link` — the run's page in the Prefect UI;
* :func:`report_crash` — the ``on_crashed`` hook every vmkeep flow gets in
  :func:`vmkeep.runtime.prefect_runtime.register_flow`.
"""

from __future__ import annotations

import logging
from typing import Any

from vmkeep.runtime import notify


def nowhere() -> None:
    """The settings of a run that sends no report (a subflow)."""
    return None


def _run_target(flow_name: str, flow_run: Any) -> str:
    """``web01 2026-12-05 01:00`` of the run named ``backup-vm web01 2026-12-05 01:00``, read
    from the server (a worker's copy of the run may predate the name the flow gave it); ``""``
    for a run that never got a vmkeep name."""
    current = str(getattr(flow_run, "name", "") or "")
    try:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            current = client.read_flow_run(flow_run.id).name or current
    except Exception:
        pass
    prefix = f"{flow_name} "
    return current.removeprefix(prefix).strip() if current.startswith(prefix) else ""


def notify_config() -> notify.NotifyConfig | None:
    """Where this worker's reports go: the environment, else the Secret block
    :data:`vmkeep.runtime.notify.BLOCK` (saved by ``vmkeep serve``), else nowhere."""
    config = notify.configured()
    if config is not None:
        return config
    from prefect.blocks.system import Secret

    try:
        block: Any = Secret.load(notify.BLOCK)
    except ValueError:  # no such block: notifications are not set up
        return None
    except Exception as exc:
        logging.getLogger("vmkeep.notify").warning(
            "notifications: Secret block %s not read: %r", notify.BLOCK, exc)
        return None
    return notify.NotifyConfig.from_block_value(block.get())


def run_link(run_id: str | None) -> str | None:
    """The run's page in the Prefect UI, when the UI's address is known."""
    from prefect.settings import PREFECT_UI_URL

    try:
        base = PREFECT_UI_URL.value()
    except Exception:
        return None
    return f"{str(base).rstrip('/')}/runs/flow-run/{run_id}" if base and run_id else None


def report_crash(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_crashed`` hook of every vmkeep flow: a top-level run whose process died (killed,
    out of memory, its worker stopped) sends a ``failure`` report, as its job could not.

    Runs in the flow's process when Prefect sees the crash there, or in the worker's."""
    if getattr(flow_run, "parent_task_run_id", None) is not None:
        return  # a subflow: its parent's run reports
    try:
        config = notify_config()
        if config is None or "failure" not in config.on:
            return
        name = str(getattr(flow, "name", "") or "")
        run_id = str(flow_run.id)
        target = _run_target(name, flow_run)
        report = notify.crash_report(
            name, target, str(getattr(state, "message", "") or "crashed"), run_id,
            run_link(run_id), getattr(flow_run, "start_time", None),
        )
        notify.send(report, config)
    except Exception:
        logging.getLogger("vmkeep.notify").warning("crash report not sent", exc_info=True)
