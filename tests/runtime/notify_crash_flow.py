"""A flow whose process dies mid-job (SIGKILL, as the kernel's OOM killer would): the process
worker that started it runs its ``on_crashed`` hooks — vmkeep's crash report among them."""

from __future__ import annotations

import os
import signal
from typing import Any

from prefect import flow

from vmkeep.runtime.prefect_runtime import register_flow, run_job_in_flow


def backup_image(spec: dict[str, Any], rt: Any) -> dict[str, Any]:
    os.kill(os.getpid(), signal.SIGKILL)
    raise AssertionError("not reached")


@flow(name="backup-image", flow_run_name="backup-image oom-victim", persist_result=False)
def killed_mid_job(spec: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = run_job_in_flow(backup_image, spec)
    return result


register_flow(backup_image, killed_mid_job)
