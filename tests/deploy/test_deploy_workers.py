"""The scheduled installation end to end: a real Prefect server on PostgreSQL, ``prefect deploy
--all`` of vmkeep/deployments/prefect.yaml, two process workers (data movers) in different pools on
loopback, backups of lab VMs triggered through the deployments.

* each run lands on the intended worker (flow-run labels) and its data in that mover's target
  (LAN mover: ``https`` into repo-lan; remote-device mover: ``direct`` datastore reads into its
  own repo-san), each VM a ``backup-vm <VM>`` task run of the multi-VM run;
* schedules registered with the cron and time zone of prefect.yaml, no secret in parameters or
  job variables (a canary vCenter password travels only in the Secret block);
* the UI (headless Chromium over CDP) shows the run, its VM task runs and its report artifact; the
  screenshot is kept under the test's tmp dir (and ``tests/deploy/artifacts/``, git-ignored);
* scale (``slow``): 20 VMs through the multi-VM deployment on both workers at once, snapshot
  concurrency measured from the server's task runs never above the per-host/per-datastore
  limits; the numbers are written to ``scale.json`` (docs/performance.md "Scale-out").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
import yaml

from tests.servers.notify_servers import Webhook, running_webhook
from vmkeep.deployments import pools, prefect_server
from vmkeep.lab import runner
from vmkeep.lab.build import missing_prerequisites
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab

KEYS = Path(__file__).resolve().parents[1] / "licensing" / "keys"
ARTIFACTS = Path(__file__).parent / "artifacts"
LIMITS = {"host": 4, "datastore": 2}  # as in prefect.yaml's `limits` anchor
N_SMALL = 20


def need(what: str, reason: str | None) -> None:
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{what} needed on CI: {reason}")
        pytest.skip(f"{what}: {reason}")


@dataclass
class Site:
    lab: runner.LabInfo
    api_url: str
    ui_url: str
    repo_lan: str
    repo_san: str
    workers: dict[str, str]
    tmp: Path
    password: str
    reports: Webhook
    runs: dict[str, Any] = field(default_factory=dict)


def _postgres_reason() -> str | None:
    from tests.deploy.deploy_postgres import pg_bindir

    return None if pg_bindir() else "PostgreSQL not installed (Debian package postgresql)"


def use_test_engine(api_url: str, pool_names: list[str]) -> None:
    """Make the pools' flow runs start as ``python -m tests.support.run_engine``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        for name in pool_names:
            template = client.read_work_pool(name).base_job_template
            template["variables"]["properties"]["command"]["default"] = (
                f"{sys.executable} -m tests.support.run_engine"
            )
            client.update_work_pool(name, WorkPoolUpdate(base_job_template=template))


@pytest.fixture(scope="module")
def reports() -> Iterator[Webhook]:
    """Where the site's job reports go."""
    with running_webhook() as hook:
        yield hook


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, reports: Webhook) -> Iterator[Site]:
    """Lab (20 small VMs) + PostgreSQL + Prefect server + setup/deploy + two workers."""
    need("ESX lab", missing_prerequisites())
    need("PostgreSQL", _postgres_reason())
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from tests.deploy import deploy_postgres

    tmp = tmp_path_factory.mktemp("deploy")
    lab = runner.up(n_small=N_SMALL, port=0, state=tmp / "lab")
    pg = server = None
    workers: dict[str, Any] = {}
    saved = {k: os.environ.get(k) for k in ("PREFECT_API_URL",)}
    try:
        pg = deploy_postgres.start()
        server = prefect_server.start(
            tmp / "prefect", env={"PREFECT_API_DATABASE_CONNECTION_URL": pg.url}
        )
        repo_lan, repo_san = str(tmp / "repo-lan"), str(tmp / "repo-san")
        for repo in (repo_lan, repo_san):
            Repository.init(repo, image_chunk_size=256 * 1024)
        mounts = {d["name"]: d["local_path"] for d in lab.datastores}
        tree = tmp / "guest-tree"  # the daily file backup's source
        (tree / "etc").mkdir(parents=True)
        for i in range(20):
            (tree / "etc" / f"file{i}.conf").write_text(f"setting = {i}\n" * (i + 1))
        variables = {
            "vcenter": lab.url,
            "vcenter_user": lab.user,
            "vcenter_cafile": lab.cafile,
            "repo_lan": repo_lan,
            "repo_san": repo_san,
            "vms_lan": ["small0[1-3]"],
            "vms_san": ["small0[4-6]"],
            "san_mounts": mounts,
            "san_device": "san-mover-1",
            "files_source": str(tree),
            "files_name": "guest-tree",
        }
        setup = subprocess.run(  # as a user would: the password only in the environment
            [sys.executable, "-m", "vmkeep.cli", "serve", "--setup-only", "--api-url",
             server.api_url, "--activate", "san", "--profile", "",  # leave the session's profiles
             *(f"--set={k}={json.dumps(v)}" for k, v in variables.items())],
            env=dict(os.environ, VMKEEP_VC_PASSWORD=lab.password, PREFECT_API_URL=server.api_url,
                     VMKEEP_NOTIFY=reports.url(), VMKEEP_NOTIFY_ON="all"),
            capture_output=True, text=True, timeout=300,
        )
        assert setup.returncode == 0, setup.stdout + setup.stderr
        assert lab.password not in setup.stdout + setup.stderr
        # the workers have no VMKEEP_NOTIFY: they read where reports go from the Secret block
        assert "job reports (failure, warning, success) go to 1 target(s)" in setup.stderr
        # The SAN mover is a SAN Remote Device: beyond the community tier, so the movers run
        # the development licence; their flow runs trust its key through the test-only engine
        # entry point (an installed vmkeep never would).
        use_test_engine(server.api_url, [pools.POOLS["lan"], pools.POOLS["san"]])
        env = {
            "PREFECT_API_URL": server.api_url,
            "VMKEEP_LICENSE": str(KEYS / "dev_licence.json"),
        }
        names = {"lan": "lan-mover-1", "san": "san-mover-1"}
        for location, name in names.items():
            workers[location] = pools.start_worker(
                location, name, env, log_path=tmp / f"worker-{location}.log"
            )
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            os.environ["PREFECT_API_URL"] = server.api_url
            yield Site(lab, server.api_url, server.ui_url, repo_lan, repo_san, names, tmp,
                       lab.password, reports)
    finally:
        for process in workers.values():
            pools.stop_worker(process)
        if server is not None:
            server.stop()
        if pg is not None:
            pg.stop()
        runner.down(tmp / "lab")
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def start_run(name: str, overrides: dict[str, Any] | None = None) -> UUID:
    """Run deployment ``name``, with ``overrides`` merged into its ``spec`` parameter (Prefect
    merges run parameters into the deployment's only at the top level), or into its parameters
    for flows that take them one by one."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    parameters: dict[str, Any] = {}
    if overrides:
        with get_client(sync_client=True) as client:
            deployed = client.read_deployment_by_name(name)
        spec = deployed.parameters.get("spec")
        parameters = {"spec": {**spec, **overrides}} if spec is not None else dict(overrides)
    run = run_deployment(name, parameters=parameters, timeout=0)
    return run.id


def wait_runs(ids: list[UUID], timeout: float = 1800) -> list[Any]:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = [client.read_flow_run(i) for i in ids]
            if all(r.state and r.state.is_final() for r in runs):
                return runs
            if time.monotonic() > deadline:
                states = {r.name: r.state_name for r in runs}
                raise AssertionError(f"runs not finished after {timeout:.0f} s: {states}")
            time.sleep(1.0)


def child_runs(parent: UUID, expected: int) -> list[Any]:
    """The VM task runs (``backup-vm <VM> <time>``) of a ``backup-vms`` run, once all
    ``expected`` have reached a final state on the server (task runs arrive through events)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    deadline = time.monotonic() + 300
    while True:
        with get_client(sync_client=True) as client:
            found = [
                t
                for t in client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[parent]))
                )
                if t.name.startswith("backup-vm ")
            ]
        done = [t for t in found if t.state and t.state.is_final()]
        if len(done) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(1.0)


def points_by_name(repo: str) -> dict[str, Any]:
    return {p.name: p for p in Repository.open(repo).list_points()}


@pytest.fixture(scope="module")
def two_mover_runs(site: Site) -> dict[str, Any]:
    """One run of each nightly deployment, at the same time, each on its own pool."""
    ids = {
        "lan": start_run("backup-vms/nightly-lan"),
        "san": start_run("backup-vms/nightly-san"),
    }
    runs = wait_runs(list(ids.values()))
    site.runs.update(zip(ids, runs, strict=True))
    return site.runs


def test_each_run_lands_on_its_mover_and_target(site: Site, two_mover_runs: dict[str, Any]
                                                ) -> None:
    for location, run in two_mover_runs.items():
        assert run.state_name == "Completed", (location, run.state.message)
        assert run.work_pool_name == pools.POOLS[location]
        assert run.labels["prefect.worker.name"] == site.workers[location]
        children = child_runs(run.id, 3)
        assert len(children) == 3 and all(c.state_name == "Completed" for c in children)
    lan, san = points_by_name(site.repo_lan), points_by_name(site.repo_san)
    assert set(lan) == {"small01", "small02", "small03"}
    assert set(san) == {"small04", "small05", "small06"}
    assert {p.meta["transport"] for p in lan.values()} == {"auto"}
    # auto reads these VMFS disks over https (per disk, with the reason, in the point)
    repo = Repository.open(site.repo_lan)
    assert {d.extra["transport"]["name"] for p in lan.values()
            for d in repo.load_point(p.id).disks} == {"https"}
    assert {p.meta["transport"] for p in san.values()} == {"direct"}
    assert {p.meta["remote_device"] for p in san.values()} == {"san-mover-1"}
    # one report per run (not per VM), sent by the worker that ran it
    for location, run in two_mover_runs.items():
        sent = [post for post in site.reports.posts if f"(run {run.id})" in post["message"]]
        assert [post["type"] for post in sent] == ["success"], location
        assert sent[0]["title"].startswith("[Success] vmkeep backup-vms ")
        vms = {"lan": ("small01", "small02", "small03"), "san": ("small04", "small05", "small06")}
        for vm in vms[location]:
            assert f"  {vm}: ok, point " in sent[0]["message"]
        assert f"/runs/flow-run/{run.id}" in sent[0]["message"]


def test_schedules_and_no_secrets_registered(site: Site, two_mover_runs: dict[str, Any]) -> None:
    from prefect.client.orchestration import get_client

    spec = yaml.safe_load(pools.PREFECT_FILE.read_text())
    with get_client(sync_client=True) as client:
        deployed = {d.name: d for d in client.read_deployments()}
    assert set(deployed) == {d["name"] for d in spec["deployments"]}
    for want in spec["deployments"]:
        got = deployed[want["name"]]
        assert got.entrypoint == want["entrypoint"]
        assert got.work_pool_name == want["work_pool"]["name"]
        # prefect.yaml registers every schedule off; the set-up switches on the defaults and
        # the SAN mover's, except the tape copy and the off-site copy: their library
        # (vmkeep_tape_library) and repository (vmkeep_repo_offsite) are not configured here,
        # so they stay paused with a reason
        assert not any(s["active"] for s in want.get("schedules", [])), want["name"]
        needs_library = want["entrypoint"].startswith(("vmkeep.flows.tape_copy",
                                                       "vmkeep.flows.copy_points"))
        expected = [
            (
                s["cron"],
                s["timezone"],
                (want["name"] in pools.ON_BY_DEFAULT and not needs_library)
                or (got.work_pool_name == "vmkeep-san" and not needs_library),
            )
            for s in want.get("schedules", [])
        ]
        actual = [(s.schedule.cron, s.schedule.timezone, s.active) for s in got.schedules]
        assert sorted(actual) == sorted(expected), want["name"]
        assert got.pull_steps == spec["pull"]
        blob = json.dumps([got.parameters, got.job_variables], default=str)
        assert site.password not in blob
    lan_spec = deployed["nightly-lan"].parameters["spec"]
    assert lan_spec["vcenter"]["password_block"] == pools.PASSWORD_BLOCK
    assert deployed["nightly-san"].parameters["spec"]["datastore_mounts"] == {
        d["name"]: d["local_path"] for d in site.lab.datastores
    }
    from prefect.blocks.system import Secret

    assert Secret.load(pools.PASSWORD_BLOCK).get() == site.password
    # switching the SAN pool on again (`serve --activate san`) leaves the GFS tape copies off:
    # each needs a media pool of its own first
    pools.activate("san")
    with get_client(sync_client=True) as client:
        again = {d.name: d for d in client.read_deployments()}
    assert not any(s.active for name in pools.OPT_IN for s in again[name].schedules)
    assert all(s.active for s in again["nightly"].schedules)  # tape-copy/nightly: switched on
    pools.deactivate_incomplete()  # as the set-up left it (no tape library here)


def test_ui_shows_run_vms_and_artifacts(site: Site, two_mover_runs: dict[str, Any]) -> None:
    from tests.deploy.deploy_browser import Browser, find_chromium

    need("Chromium", None if find_chromium() else "not installed (Debian package chromium)")
    run = two_mover_runs["lan"]
    browser = Browser()
    try:
        browser.open(f"{site.ui_url}/runs/flow-run/{run.id}")
        browser.wait_text(run.name, "backup-vms", "nightly-lan", "vmkeep-lan", "Completed")
        assert browser.click_text("Task Runs")  # each VM is a task run named by the VM
        browser.wait_text("backup-vm small01", "backup-vm small02", "backup-vm small03")
        assert browser.click_text("Artifacts")
        browser.wait_text("backup-vms", "3 of 3 VMs backed up")
        shot = browser.screenshot(site.tmp / "ui-flow-run.png")
    finally:
        browser.close()
    assert shot.stat().st_size > 10_000
    ARTIFACTS.mkdir(exist_ok=True)  # git-ignored (.gitignore): CI keeps it as an artifact
    shutil.copy(shot, ARTIFACTS / shot.name)


def artifact_keys(flow_run_id: UUID) -> set[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key for a in found if a.key}


def test_scheduled_jobs_run_on_the_lan_mover(site: Site, two_mover_runs: dict[str, Any]) -> None:
    """Each maintenance deployment, run as scheduled (its own parameters), completes."""
    jobs = {
        "backup-files/daily-files": "backup-files",
        "verify/weekly-lan": "verify",
        "retention/daily-lan": "retention",
        "sweep-snapshots/hourly": None,
        "licence-report/weekly": "vmkeep-licence-report",
    }
    files = start_run("backup-files/daily-files")  # first: verify then sees its point
    runs = {"backup-files/daily-files": wait_runs([files])[0]}
    overrides = {"verify/weekly-lan": {"subset": "1/1"}}  # read every pack
    ids = {name: start_run(name, overrides.get(name)) for name in jobs if name not in runs}
    runs.update(zip(ids, wait_runs(list(ids.values())), strict=True))
    for name, run in runs.items():
        assert run.state_name == "Completed", (name, run.state.message)
        assert run.labels["prefect.worker.name"] == site.workers["lan"]
    deadline = time.monotonic() + 300  # artifacts arrive through the API a moment later
    while True:
        missing = [n for n, key in jobs.items() if key and key not in artifact_keys(runs[n].id)]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    assert not missing
    names = {p.name for p in Repository.open(site.repo_lan).list_points()}
    assert "guest-tree" in names


def _vm(child: Any) -> str:
    """The VM of a ``backup-vm <VM> <time>`` task run."""
    return str(child.name.split()[1])


def _task_intervals(flow_run_ids: list[UUID]) -> dict[str, dict[str, tuple[datetime, datetime]]]:
    """Per VM (the label of its steps, ``<VM>: <step>``), each step's interval."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    out: dict[str, dict[str, tuple[datetime, datetime]]] = defaultdict(dict)
    with get_client(sync_client=True) as client:  # the API pages at 200: page through
        tasks = []
        for run_id in flow_run_ids:
            offset = 0
            while True:
                page = client.read_task_runs(
                    flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])),
                    offset=offset,
                )
                tasks += page
                offset += len(page)
                if not page:
                    break
    for t in tasks:
        if t.start_time and t.end_time and ": " in t.name:
            vm, _, step = t.name.partition(": ")
            # disk steps are named by their disk ("vm: disk 0 [ds1] vm/vm.vmdk")
            out[vm]["disk" if step.startswith("disk ") else step] = (t.start_time, t.end_time)
    return out


def peak_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda x: (x[0], x[1]))
    peak = now = 0
    for _, delta in events:
        now += delta
        peak = max(peak, now)
    return peak


@pytest.mark.slow
def test_scale_twenty_vms_on_two_workers(site: Site, two_mover_runs: dict[str, Any]) -> None:
    half = N_SMALL // 2
    lan_vms = [f"small{i:02d}" for i in range(1, half + 1)]
    san_vms = [f"small{i:02d}" for i in range(half + 1, N_SMALL + 1)]
    started = time.monotonic()
    ids = [
        start_run("backup-vms/nightly-lan", {"patterns": lan_vms, "max_parallel": 6}),
        start_run("backup-vms/nightly-san", {"patterns": san_vms, "max_parallel": 6}),
    ]
    parents = wait_runs(ids, timeout=1800)
    wall = time.monotonic() - started
    assert [p.state_name for p in parents] == ["Completed", "Completed"], [
        p.state.message for p in parents
    ]
    children = [c for p in parents for c in child_runs(p.id, half)]
    assert len(children) == N_SMALL
    # the licence is checked once, in the parent run; each child captures its config first
    want = {"snapshot", "release-snapshot", "capture-vm-config", "disk"}
    deadline = time.monotonic() + 300  # task-run states reach the database through events
    while True:
        tasks = _task_intervals([p.id for p in parents])
        if all(want <= set(tasks[_vm(c)]) for c in children) or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    where = {}  # instanceUuid -> (host, datastores), from the restore points
    for repo in (site.repo_lan, site.repo_san):
        for p in Repository.open(repo).list_points():
            if p.kind != "vm":
                continue
            point = Repository.open(repo).load_point(p.id)
            where[p.name] = (
                p.meta["host"], {d.extra["datastore"] for d in point.disks}
            )
    per_slot: dict[str, list[tuple[datetime, datetime]]] = defaultdict(list)
    parts: dict[str, list[float]] = defaultdict(list)
    for child in children:
        steps = tasks[_vm(child)]
        assert {"snapshot", "release-snapshot", "capture-vm-config"} <= set(steps), (
            child.name, child.state_name, sorted(steps))
        window = (steps["snapshot"][0], steps["release-snapshot"][1])
        host, datastores = where[_vm(child)]
        per_slot[f"host:{host}"].append(window)
        for datastore in datastores:
            per_slot[f"datastore:{datastore}"].append(window)
        total = (child.end_time - child.start_time).total_seconds()
        data = sum((e - s).total_seconds() for name, (s, e) in steps.items()
                   if name == "disk")
        slot_wait = (steps["snapshot"][0] - steps["capture-vm-config"][1]).total_seconds()
        parts["run"].append(total)
        parts["data"].append(data)
        parts["slot_wait"].append(slot_wait)
        parts["snapshot_held"].append((window[1] - window[0]).total_seconds())
        parts["overhead"].append(total - data - slot_wait)
    peaks = {slot: peak_overlap(iv) for slot, iv in per_slot.items()}
    for slot, peak in peaks.items():
        assert peak <= LIMITS[slot.split(":")[0]], (slot, peak)
    direct = direct_baseline(site, lan_vms)
    numbers = {
        "vms": N_SMALL,
        "workers": 2,
        "wall_s": round(wall, 1),
        "vms_per_hour": round(N_SMALL / wall * 3600),
        **{f"mean_{k}_s": round(sum(v) / len(v), 2) for k, v in parts.items()},
        "peak_snapshots": peaks,
        "limits": LIMITS,
        "direct_same_limits": direct,
    }
    (site.tmp / "scale.json").write_text(json.dumps(numbers, indent=2))
    print("scale-out:", json.dumps(numbers))
    assert max(v for k, v in peaks.items() if k.startswith("datastore:")) >= 1


def direct_baseline(site: Site, vms: list[str]) -> dict[str, Any]:
    """The same multi-VM flow without Prefect (direct mode, in-process) into a fresh repo."""
    from vmkeep.flows.backup_vms import backup_vms
    from vmkeep.flows.run import run_flow

    repo = str(site.tmp / "repo-direct")
    Repository.init(repo, image_chunk_size=256 * 1024)
    import vmkeep.licensing.store as store

    saved = {k: os.environ.get(k) for k in ("VMKEEP_VC_USER", "VMKEEP_VC_PASSWORD",
                                            "VMKEEP_LICENSE")}
    saved_key = store.VENDOR_PUBLIC_KEY_PEM
    store.VENDOR_PUBLIC_KEY_PEM = (KEYS / "dev_public.pem").read_bytes()
    os.environ.update(VMKEEP_VC_USER=site.lab.user, VMKEEP_VC_PASSWORD=site.password,
                      VMKEEP_LICENSE=str(KEYS / "dev_licence.json"))
    try:
        started = time.monotonic()
        result = run_flow(backup_vms, False, repo=repo, vcenter=site.lab.url,
                          cafile=site.lab.cafile, patterns=vms, max_parallel=6,
                          concurrency=LIMITS)
        wall = time.monotonic() - started
    finally:
        store.VENDOR_PUBLIC_KEY_PEM = saved_key
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    assert result["failed"] == 0
    runs = [r["duration_s"] for r in result["vms"]]
    return {"vms": len(vms), "wall_s": round(wall, 1),
            "vms_per_hour": round(len(vms) / wall * 3600),
            "mean_vm_run_s": round(sum(runs) / len(runs), 2)}
