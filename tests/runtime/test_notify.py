"""Job reports (vmkeep.runtime.notify): e-mail to a real SMTP server and a webhook on loopback,
from CLI runs, in-process runs and Prefect flow runs; a report never changes a job's outcome."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.servers.notify_servers import Mailbox, Webhook, eventually, mailbox, webhook
from tests.servers.server_common import free_port
from tests.support.run_cli import VMKEEP, cli_env
from vmkeep.runtime import notify

__all__ = ["mailbox", "webhook"]  # fixtures


def vmkeep(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = cli_env(PREFECT_API_URL="", **env)
    for name in ("VMKEEP_NOTIFY", "VMKEEP_NOTIFY_FILE", "VMKEEP_NOTIFY_ON"):
        if name not in env:
            full.pop(name, None)
    return subprocess.run([*VMKEEP, *args], capture_output=True, text=True, env=full,
                          timeout=600)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    assert vmkeep("init", VMKEEP_REPO=str(path)).returncode == 0
    return path


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "disk.img"
    with open(path, "wb") as f:
        f.write(os.urandom(1 << 20))
        f.truncate(4 << 20)
    return path


# -- settings ----------------------------------------------------------------------------------


def test_statuses_and_urls_are_parsed_and_bad_ones_named() -> None:
    assert notify.parse_on(None) == {"failure", "warning"}
    assert notify.parse_on(" Success , failure") == {"success", "failure"}
    assert notify.parse_on("all") == set(notify.STATUSES)
    with pytest.raises(notify.NotifySettingsError, match="unknown status sucess"):
        notify.parse_on("failure,sucess")
    text = "# the team\njson://a/x  mailto://b\n\n  # old: slack://c\njson://a/x\n"
    assert notify.parse_urls(text) == ("json://a/x", "mailto://b")


def test_a_notify_file_that_is_not_text_is_named_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes that are not UTF-8 were reported as a raw ``UnicodeDecodeError(...)`` repr."""
    urls = tmp_path / "urls"
    urls.write_bytes(b"\xff\xfe json://a/x")
    monkeypatch.delenv("VMKEEP_NOTIFY", raising=False)
    monkeypatch.setenv("VMKEEP_NOTIFY_FILE", str(urls))
    with pytest.raises(notify.NotifySettingsError, match="not UTF-8 text"):
        notify.NotifyConfig.from_settings(strict=True)


def test_shown_urls_hide_passwords() -> None:
    shown = notify.mask("mailtos://bob:s3cret@smtp.example.com?to=ops@example.com&pass=x")
    assert "s3cret" not in shown and "bob" in shown and "smtp.example.com" in shown
    assert "TIiajkdnlazkcOXrIdevi7FQ" not in notify.mask(
        "slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ")
    assert notify.mask("nonsense://u:pw@h/p?token=abc") == "nonsense://u:****@h/p?token=****"


# -- CLI runs (no Prefect) ---------------------------------------------------------------------


def test_a_failed_backup_mails_a_report_and_keeps_its_exit_code(
    mailbox: Mailbox, image: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "unmounted-nas" / "repo"
    plain = vmkeep("backup", "image", str(image), "--name", "db01", VMKEEP_REPO=str(missing))
    reported = vmkeep("backup", "image", str(image), "--name", "db01", VMKEEP_REPO=str(missing),
                      VMKEEP_NOTIFY=mailbox.url())
    assert plain.returncode == reported.returncode == 10, reported.stderr
    assert reported.stderr == plain.stderr  # the report adds nothing to the terminal
    assert len(mailbox.messages) == 1
    message = mailbox.messages[0]
    assert message["Subject"] == f"[Failed] vmkeep backup-image db01 on {socket.gethostname()}"
    assert message["To"] == "backup-admins@example.com"
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "Result: failed (exit code 10)" in text and str(missing) in text
    attached = {part.get_filename(): part.get_content() for part in message.iter_attachments()}
    document = json.loads(attached["summary.json"])
    assert document["status"] == "failure" and document["exit_code"] == 10


def test_success_is_reported_only_when_asked(
    mailbox: Mailbox, repo: Path, image: Path
) -> None:
    quiet = vmkeep("backup", "image", str(image), "--name", "web01", VMKEEP_REPO=str(repo),
                   VMKEEP_NOTIFY=mailbox.url())
    assert quiet.returncode == 0, quiet.stderr
    assert mailbox.messages == []  # default: failure,warning
    asked = vmkeep("backup", "image", str(image), "--name", "web01", "--json",
                   VMKEEP_REPO=str(repo), VMKEEP_NOTIFY=mailbox.url(),
                   VMKEEP_NOTIFY_ON="success")
    assert asked.returncode == 0, asked.stderr
    point = json.loads(asked.stdout)["id"]
    message = mailbox.messages[0]
    assert message["Subject"].startswith("[Success] vmkeep backup-image web01 on ")
    attached = {part.get_filename(): part.get_content() for part in message.iter_attachments()}
    assert json.loads(attached["summary.json"])["summary"]["id"] == point


def test_targets_from_a_file_and_an_unreachable_one_do_not_fail_the_backup(
    webhook: Webhook, repo: Path, image: Path, tmp_path: Path
) -> None:
    dead = free_port()  # nothing listens there
    urls = tmp_path / "notify.urls"
    urls.write_text(f"# ops\njson://ops:hunter2@127.0.0.1:{dead}/x\n{webhook.url()}\n")
    run = vmkeep("backup", "image", str(image), "--name", "web01", VMKEEP_REPO=str(repo),
                 VMKEEP_NOTIFY_FILE=str(urls), VMKEEP_NOTIFY_ON="all")
    assert run.returncode == 0, run.stderr
    assert f"job report not sent to json://ops:****@127.0.0.1:{dead}/x" in run.stderr
    assert "hunter2" not in run.stderr
    assert [post["title"] for post in webhook.posts] == [
        f"[Success] vmkeep backup-image web01 on {socket.gethostname()}"]
    assert webhook.posts[0]["type"] == "success"


def test_bad_notification_settings_never_stop_a_backup(
    webhook: Webhook, repo: Path, image: Path, tmp_path: Path
) -> None:
    run = vmkeep("backup", "image", str(image), "--name", "web01", VMKEEP_REPO=str(repo),
                 VMKEEP_NOTIFY=webhook.url(), VMKEEP_NOTIFY_ON="failures",
                 VMKEEP_NOTIFY_FILE=str(tmp_path / "missing.urls"))
    assert run.returncode == 0, run.stderr
    # the job ran; its report says why it is a warning (default statuses used)
    [post] = webhook.posts
    assert post["title"].startswith("[Warning] vmkeep backup-image web01")
    assert "VMKEEP_NOTIFY_ON: unknown status failures" in post["message"]
    assert "VMKEEP_NOTIFY_FILE" in post["message"]


def test_notify_test_and_show(webhook: Webhook) -> None:
    dead = f"json://127.0.0.1:{free_port()}/x"
    shown = vmkeep("notify", "show", "--json", VMKEEP_NOTIFY=f"{webhook.url()} {dead}")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {
        "source": "environment", "targets": [webhook.url(), dead], "on": ["failure", "warning"]}
    tested = vmkeep("notify", "test", "--json", VMKEEP_NOTIFY=f"{webhook.url()} {dead}")
    assert tested.returncode == 15
    assert [t["sent"] for t in json.loads(tested.stdout)["targets"]] == [True, False]
    assert "did not reach 1 of 2 target(s)" in tested.stderr
    assert webhook.posts[0]["title"].startswith("[Success] vmkeep notify-test on ")
    unset = vmkeep("notify", "test")
    assert unset.returncode == 14 and "No notification target" in unset.stderr


# -- in-process runs: warnings and the VMs of a multi-VM job ------------------------------------


def backup_vms(spec: dict[str, Any], rt: Any) -> dict[str, Any]:
    """A stand-in job with a multi-VM summary: one VM warned (and logged it)."""
    rt.log.warning("web02: quiescing failed; crash-consistent snapshot taken")
    return {"vms": [{"vm": "web01", "id": "a1b2c3d4e5", "consistency": "filesystem",
                     "disks": [{"bytes_read": 3_000_000, "bytes_new": 1_000_000}] * 2,
                     "duration_s": 12.25},
                    {"vm": "web02", "id": "d4e5f6", "warnings": ["quiescing failed"]}],
            "failed": 0}


def test_a_job_that_warned_sends_a_warning_report_with_its_vms(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmkeep.flows.run import run

    monkeypatch.setenv("VMKEEP_NOTIFY", webhook.url())
    monkeypatch.setenv("PREFECT_API_URL", "")
    run(backup_vms, {}, orchestrate=False)
    [post] = webhook.posts
    assert post["type"] == "warning" and post["title"].startswith("[Warning] vmkeep backup-vms")
    message = post["message"]
    assert "web02: quiescing failed; crash-consistent snapshot taken" in message
    assert ("  web01: ok, point a1b2c3d4, filesystem-consistent, 2 disks, 6 MB read, 2 MB new, "
            "12.2 s") in message
    assert "  web02: ok, point d4e5f6, 1 warning(s)" in message


def test_a_mail_report_is_html_with_a_row_per_vm_and_escapes_what_vcenter_said(
    mailbox: Mailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Veeam-style report mails: status bar, facts, a table of the VMs; names and errors from
    vCenter are escaped; the plain part still reads like the text report; ``?format=text``
    asks for plain text only."""
    from vmkeep.flows.run import run

    def backup_vms(spec: dict[str, Any], rt: Any) -> dict[str, Any]:
        return {"vms": [
            {"vm": "web01", "id": "a1b2c3d4e5", "consistency": "filesystem", "attempts": 2,
             "disks": [{"mode": "cbt", "bytes_read": 3_000_000, "bytes_new": 1_000_000,
                        "bytes_stored": 400_000}] * 2, "duration_s": 12.25},
            {"vm": "<script>alert(1)</script>", "error": "snapshot failed: <b>locked</b>",
             "attempts": 3},
        ], "failed": 1}

    monkeypatch.setenv("VMKEEP_NOTIFY", mailbox.url())
    monkeypatch.setenv("VMKEEP_NOTIFY_ON", "all")
    monkeypatch.setenv("PREFECT_API_URL", "")
    run(backup_vms, {}, orchestrate=False)
    [message] = mailbox.messages
    html = message.get_body(("html",)).get_content()
    assert "<th style" in html and ">Restore point</th>" in html
    assert ">web01</td>" in html and ">a1b2c3d4</td>" in html and ">6.0 MB</td>" in html
    assert ">800.0 KB</td>" in html and ">cbt, cbt</td>" in html and ">2</td>" in html
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "snapshot failed: &lt;b&gt;locked&lt;/b&gt;" in html
    plain = message.get_body(("plain",)).get_content()
    assert "Job: backup-vms" in plain and "web01" in plain
    attached = {part.get_filename() for part in message.iter_attachments()}
    assert attached == {"summary.json"}

    mailbox.messages.clear()
    monkeypatch.setenv("VMKEEP_NOTIFY", mailbox.url() + "&format=text")
    run(backup_vms, {}, orchestrate=False)
    [message] = mailbox.messages
    assert message.get_body(("html",)) is None
    assert "  web01: ok, point a1b2c3d4" in message.get_body(("plain",)).get_content()


def test_warnings_of_another_run_in_the_process_are_not_this_runs(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmkeep.flows.run import run

    monkeypatch.setenv("VMKEEP_NOTIFY", webhook.url())
    monkeypatch.setenv("VMKEEP_NOTIFY_ON", "all")
    logging.getLogger("vmkeep.elsewhere").warning("not this run's")

    def backup_image(spec: dict[str, Any], rt: Any) -> dict[str, Any]:
        return {"id": "abc"}

    run(backup_image, {}, orchestrate=False)
    assert [post["type"] for post in webhook.posts] == ["success"]


# -- Prefect flow runs -------------------------------------------------------------------------


def failing_job(spec: dict[str, Any], rt: Any) -> dict[str, Any]:
    from vmkeep.storage.errors import TargetFull

    raise TargetFull("pack 1f2e", "no space left on /srv/backup")


def test_a_flow_run_reports_with_its_run_page(
    prefect_api: str, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import flow

    from vmkeep.runtime.prefect_runtime import run_job_in_flow

    @flow(name="retention", persist_result=False)
    def retention(spec: dict[str, Any]) -> Any:
        return run_job_in_flow(failing_job, spec)

    monkeypatch.setenv("VMKEEP_NOTIFY", webhook.url())
    state = retention({}, return_state=True)
    assert state.is_failed()
    [post] = webhook.posts
    assert post["title"].startswith("[Failed] vmkeep failing-job")
    assert "Result: failed (exit code 15): The backup target is full" in post["message"]
    run_id = str(state.state_details.flow_run_id)
    assert f"(run {run_id})" in post["message"]
    ui = prefect_api.removesuffix("/api")
    assert f"Run: {ui}/runs/flow-run/{run_id}" in post["message"]


def test_workers_without_settings_use_the_secret_block(
    prefect_api: str, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import flow
    from prefect.blocks.system import Secret

    from vmkeep.runtime.prefect_runtime import run_job_in_flow

    monkeypatch.delenv("VMKEEP_NOTIFY", raising=False)
    monkeypatch.delenv("VMKEEP_NOTIFY_FILE", raising=False)
    config = notify.NotifyConfig((webhook.url(),), frozenset({"failure"}))
    Secret(value=json.dumps(config.block_value())).save(notify.BLOCK, overwrite=True)
    try:
        @flow(name="verify", persist_result=False)
        def verify(spec: dict[str, Any]) -> Any:
            return run_job_in_flow(failing_job, spec)

        assert verify({}, return_state=True).is_failed()
        assert [post["type"] for post in webhook.posts] == ["failure"]
        shown = subprocess.run(
            [*VMKEEP, "notify", "show", "--json"], capture_output=True, text=True, timeout=300,
            env={k: v for k, v in cli_env(PREFECT_API_URL=prefect_api).items()
                 if not k.startswith("VMKEEP_NOTIFY")},
        )
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout) == {"source": "Prefect Secret block vmkeep-notify",
                                            "targets": [webhook.url()], "on": ["failure"]}
    finally:
        Secret.delete(notify.BLOCK)


#: A flow whose job works (in one-second steps, as a job's reads and writes are) until stopped.
#: Not one long ``time.sleep``: the kernel may hand a process's SIGTERM to any of its threads
#: (Prefect's run several), and then a main thread asleep in one C call sees the signal only
#: when that call returns.  SIGUSR1 prints every thread's stack, should the run not stop.
CRASHING_RUN = """
import faulthandler, os, signal, sys, time
from prefect import flow
from vmkeep.runtime.prefect_runtime import register_flow, run_job_in_flow

faulthandler.register(signal.SIGUSR1, all_threads=True)

def backup_image(spec, rt):
    open(sys.argv[1], "w").close()
    for _ in range(600):
        time.sleep(1)

@flow(name="backup-image", flow_run_name="backup-image fileserver 2026-12-05 01:00",
      persist_result=False)
def backup_image_flow(spec: dict) -> dict:
    return run_job_in_flow(backup_image, spec)

register_flow(backup_image, backup_image_flow)
backup_image_flow({})
"""


def test_a_run_killed_mid_job_is_reported_by_its_crash_hook(
    prefect_api: str, webhook: Webhook, tmp_path: Path
) -> None:
    started = tmp_path / "started"
    proc = subprocess.Popen(
        [sys.executable, "-c", CRASHING_RUN, str(started)],
        env=cli_env(PREFECT_API_URL=prefect_api, VMKEEP_NOTIFY=webhook.url()),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert eventually(started.exists, timeout=300), proc.stdout
        proc.send_signal(signal.SIGTERM)  # what a worker stopping the run's process sends
        try:
            output, _ = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # where it is stuck, for the failure's message
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=10)
            proc.kill()
            output, _ = proc.communicate()
            pytest.fail(f"the run did not stop within 300 s of SIGTERM:\n{output}")
    finally:
        if proc.poll() is None:
            proc.kill()
    posts = eventually(lambda: webhook.posts, timeout=30)
    assert [post["type"] for post in posts] == ["failure"], output
    assert posts[0]["title"].startswith("[Failed] vmkeep backup-image fileserver")
    assert "the run crashed" in posts[0]["message"]


def test_the_report_waits_for_no_slow_target(webhook: Webhook) -> None:
    """Apprise's own timeouts bound a send to a target that accepts and never answers."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"json://127.0.0.1:{silent.getsockname()[1]}/x?rto=1&cto=1"
        config = notify.NotifyConfig((url, webhook.url()), frozenset(notify.STATUSES))
        report = notify.crash_report("backup-vm", "web01", "killed", None, None, None)
        assert notify.send(report, config) is False  # returns: the read timeout bounds it
    assert [post["type"] for post in webhook.posts] == ["failure"]


def test_a_subflow_is_a_line_of_its_parents_report_not_a_report(
    prefect_api: str, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import flow

    from vmkeep.runtime.prefect_runtime import run_job_in_flow

    def backup_vm(spec: dict[str, Any], rt: Any) -> dict[str, Any]:
        return {"vm": spec["vm"], "id": "0a1b"}

    @flow(name="backup-vm", persist_result=False)
    def child(spec: dict[str, Any]) -> Any:
        return run_job_in_flow(backup_vm, spec)

    def backup_vms(spec: dict[str, Any], rt: Any) -> dict[str, Any]:
        return {"vms": [child({"vm": "web01"})], "failed": 0}

    @flow(name="backup-vms", persist_result=False)
    def parent(spec: dict[str, Any]) -> Any:
        return run_job_in_flow(backup_vms, spec)

    monkeypatch.setenv("VMKEEP_NOTIFY", webhook.url())
    monkeypatch.setenv("VMKEEP_NOTIFY_ON", "all")
    parent({})
    assert [post["title"].split(" on ")[0] for post in webhook.posts] == [
        "[Success] vmkeep backup-vms"]
    assert "  web01: ok, point 0a1b" in webhook.posts[0]["message"]
    assert webhook.posts[0]["title"].startswith("[Success] vmkeep backup-vms on ")


def test_only_the_last_attempt_of_a_retried_deployment_run_reports(
    prefect_api: str, webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect import flow

    from vmkeep.runtime import prefect_runtime
    from vmkeep.storage.errors import TargetUnreachable

    attempts: list[int] = []

    def backup_image(spec: dict[str, Any], rt: Any) -> dict[str, Any]:
        attempts.append(1)
        raise TargetUnreachable("nas01", "connection timed out")

    @flow(name="backup-image", persist_result=False, retries=2, retry_delay_seconds=0)
    def nightly(spec: dict[str, Any]) -> Any:
        return prefect_runtime.run_job_in_flow(backup_image, spec)

    monkeypatch.setattr(prefect_runtime, "_from_deployment", lambda: True)  # as if scheduled
    monkeypatch.setenv("VMKEEP_NOTIFY", webhook.url())
    assert nightly({}, return_state=True).is_failed()
    assert len(attempts) == 3
    assert [post["type"] for post in webhook.posts] == ["failure"]
    assert "unreachable (nas01)" in webhook.posts[0]["message"]


def test_titles_name_what_the_job_worked_on() -> None:
    from vmkeep.jobs.specs import BackupImageSpec, BackupVmsSpec

    vms = BackupVmsSpec.model_validate({"vcenter": {"url": "https://vc"}, "repo": "/r",
                                        "names": ["db01"], "patterns": ["web*"],
                                        "folder": "Prod"})
    assert notify.describe(vms) == "db01, web* (folder=Prod)"
    assert notify.describe(BackupImageSpec(repo="/r", path="/x.img", name="web01")) == "web01"


def test_a_run_killed_outright_is_reported_by_its_worker(
    prefect_api: str, webhook: Webhook, tmp_path: Path
) -> None:
    """SIGKILL leaves the flow's process no chance: the process worker sees it exit, marks the
    run Crashed and runs the flow's crash hooks itself, with the worker's settings."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.deployments import run_deployment
    from prefect.exceptions import ObjectAlreadyExists
    from prefect.workers.process import ProcessWorker

    from tests.support.run_cli import ROOT
    from vmkeep.deployments import pools

    pool = "vmkeep-test-crash"
    with get_client(sync_client=True) as client, contextlib.suppress(ObjectAlreadyExists):
        client.create_work_pool(WorkPoolCreate(
            name=pool, type="process",
            base_job_template=ProcessWorker.get_default_base_job_template()))
    source: Any = flow.from_source(
        source=str(ROOT), entrypoint="tests/runtime/notify_crash_flow.py:killed_mid_job")
    source.deploy(name="oom", work_pool_name=pool, build=False, push=False, print_next_steps=False,
                  parameters={"spec": {}}, ignore_warnings=True)
    with open(tmp_path / "worker.log", "wb") as log:
        worker = subprocess.Popen(
            [pools._prefect_cli(), "worker", "start", "--pool", pool, "--type", "process"],
            env=cli_env(PREFECT_API_URL=prefect_api, VMKEEP_NOTIFY=webhook.url(),
                        **pools.quiet_prefect_env()),
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        run = run_deployment("backup-image/oom", timeout=0)
        posts = eventually(lambda: webhook.posts, timeout=600)
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(run.id).state
    finally:
        pools.stop_worker(worker)
    assert state is not None and state.is_crashed(), (tmp_path / "worker.log").read_text()
    assert [post["type"] for post in posts] == ["failure"]
    assert posts[0]["title"].startswith("[Failed] vmkeep backup-image oom-victim on ")
    assert f"(run {run.id})" in posts[0]["message"] and "the run crashed" in posts[0]["message"]


def test_a_retention_report_counts_what_it_kept_and_forgot(
    webhook: Webhook, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.storage.storage_helpers import scribble, write_image
    from vmkeep.flows.retention import retention
    from vmkeep.flows.run import run_flow
    from vmkeep.storage.disk_backup import backup_disk, commit_point
    from vmkeep.storage.repository import Repository

    repo = Repository.init(str(tmp_path / "repo"), image_chunk_size=64 * 1024)
    img = write_image(tmp_path / "a.img", size=1 << 20, seed=3)
    for i in range(3):
        scribble(img, [(0, 300_000)], seed=30 + i)
        with open(img, "rb") as f:
            commit_point(repo, "web01", [backup_disk(repo, f, img.stat().st_size)])
    repo.close()
    monkeypatch.setenv("VMKEEP_NOTIFY", webhook.url())
    monkeypatch.setenv("VMKEEP_NOTIFY_ON", "success")
    run_flow(retention, orchestrate=False, repo=repo.backend.location, keep_last=1,
             keep_daily=0, keep_weekly=0, keep_monthly=0, grace="0s")
    [post] = webhook.posts
    assert post["title"].startswith("[Success] vmkeep retention ")
    lines = post["message"].splitlines()
    assert "  kept: 1" in lines and "  forgotten: 2" in lines
    assert any(line.startswith("  prune.") for line in lines), post["message"]


def test_a_block_edited_by_hand_is_read_leniently(caplog: pytest.LogCaptureFixture) -> None:
    value = json.dumps({"urls": ["json://a/x"], "on": "failure,sucess"})
    config = notify.NotifyConfig.from_block_value(value)
    assert config is not None and config.on == notify.DEFAULT_ON
    assert "unknown status sucess" in caplog.text
    assert notify.NotifyConfig.from_block_value("json://a/x") is None  # not the block's shape
    assert notify.NotifyConfig.from_block_value({"urls": "json://a/x"}) is None
    assert caplog.text.count("is not {") == 2


def test_ctrl_c_in_a_cli_run_reports_an_interrupted_run(
    webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vmkeep.flows.run import run

    def backup_files(spec: dict[str, Any], rt: Any) -> dict[str, Any]:
        raise KeyboardInterrupt

    monkeypatch.setenv("VMKEEP_NOTIFY", webhook.url())
    with pytest.raises(KeyboardInterrupt):
        run(backup_files, {}, orchestrate=False)
    [post] = webhook.posts
    assert post["type"] == "failure"
    assert "Result: failed: interrupted (KeyboardInterrupt)" in post["message"]
