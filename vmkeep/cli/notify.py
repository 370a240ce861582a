"""``vmkeep notify show|test``: where job reports go, and a test report to each target.

The targets come from ``VMKEEP_NOTIFY`` / ``VMKEEP_NOTIFY_FILE`` (never argv: Apprise URLs carry
passwords), else — when Prefect's settings name an API — from the Secret block ``vmkeep serve``
saved (:data:`vmkeep.runtime.notify.BLOCK`).  See :mod:`vmkeep.runtime.notify`.
"""

from __future__ import annotations

import typer

from vmkeep.cli.common import (
    JsonOpt,
    VerboseOpt,
    console_err,
    console_out,
    emit_json,
    setup_logging,
)
from vmkeep.cli.main import app
from vmkeep.errors import InputError, VmkeepError
from vmkeep.runtime import notify

notify_app = typer.Typer(
    help="Job reports by e-mail, chat or webhook: show the targets, send a test report.",
    no_args_is_help=True,
)
app.add_typer(notify_app, name="notify")


class NotConfigured(InputError):
    """No notification target: set VMKEEP_NOTIFY (Apprise URLs) or VMKEEP_NOTIFY_FILE{}"""


class TestNotSent(VmkeepError):
    """The test report did not reach {} of {} target(s): {}"""

    exit_code = 15


def _config() -> tuple[notify.NotifyConfig, str]:
    config = notify.NotifyConfig.from_settings(strict=True)
    if config is not None:
        return config, "environment"
    from vmkeep.runtime.settings import api_configured

    if api_configured():
        from vmkeep.orchestration import choose

        choose(True)
        from vmkeep.runtime.prefect_reports import notify_config

        block = notify_config()
        if block is not None:
            return block, f"Prefect Secret block {notify.BLOCK}"
        raise NotConfigured(f", or save the Secret block {notify.BLOCK} (vmkeep serve does)")
    raise NotConfigured("")


@notify_app.command("show")
def show_cmd(json_out: JsonOpt = False, verbose: VerboseOpt = 0) -> None:
    """Show where job reports go (passwords masked) and which ones are sent."""
    setup_logging(verbose)
    config, source = _config()
    on = [status for status in notify.STATUSES if status in config.on]
    targets = [notify.mask(url) for url in config.urls]
    if json_out:
        emit_json({"source": source, "targets": targets, "on": on})
        return
    console_out.print(f"reports on: {', '.join(on)}  (from the {source})", soft_wrap=True)
    for target in targets:
        console_out.print(f"  {target}", soft_wrap=True, markup=False, highlight=False)


@notify_app.command("test")
def test_cmd(json_out: JsonOpt = False, verbose: VerboseOpt = 0) -> None:
    """Send a test report to every target; exit code 15 when one did not take it."""
    setup_logging(verbose)
    config, source = _config()
    results = notify.send_test_reports(config)
    failed = [target for target, sent in results if not sent]
    if json_out:
        emit_json({"source": source,
                   "targets": [{"target": target, "sent": sent} for target, sent in results]})
    else:
        for target, sent in results:
            console_err.print(f"{'sent' if sent else 'NOT SENT'}  {target}", soft_wrap=True,
                              markup=False, highlight=False)
    if failed:
        raise TestNotSent(len(failed), len(results), ", ".join(failed))
