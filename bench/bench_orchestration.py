"""What orchestration costs per VM: the same tiny-VM backups directly and through Prefect.

    uv run --frozen python bench/bench_orchestration.py [--vms 6] [--rounds 3]
        [--code DIR]        # another vmkeep tree to measure (e.g. the code before a change:
                            #   git archive <commit> | tar -x -C /tmp/before; --code /tmp/before)
        [--before DIR]      # also measure this tree's orchestrated runs in every round,
                            #   interleaved with --code's (before/after under the same load;
                            #   the other tree first in even rounds, last in odd ones)

One ESX lab (``--vms`` tiny VMs, 8 MiB disks) and one Prefect server on loopback serve every
measurement; each backup is an incremental of an unchanged VM (a first full backup warms up).
Everything runs through the CLI (``python -m vmkeep.cli``), so two versions of the code are
measured the same way:

1. ``backup vm small* --parallel 1`` directly (``--no-prefect``) and through the server
   (``--prefect``: a ``backup-vms`` flow run, each VM a task run — a subflow in older code —
   in-process): orchestration per VM = (orchestrated wall − direct wall − Prefect's import
   time) / VMs; also reported with the import spread over the VMs, as (the ``backup-vms`` flow
   run's duration on the server − direct wall) / VMs (no process start or import: the worker's
   measure), and inside each VM's job (its ``duration_s``, orchestrated − direct).
2. The same multi-VM run as a deployment run picked up by a process worker: per VM =
   (flow-run duration − direct wall) / VMs (the worker's polling and process start excluded).
3. One-VM CLI runs ``--prefect`` vs ``--no-prefect``, and ``python -c 'import prefect'``:
   goal: orchestrated − direct ≤ Prefect's import time + 0.5 s.
4. Snapshot held (from the end of the ``snapshot`` task to the start of ``release-snapshot``)
   against the data time (the disk tasks), from the orchestrated runs' task runs: goal ≤ data +
   0.3 s.

Each round runs 1 and 3 back to back (interleaved), so the load of a shared machine moves them
alike; the JSON records the load average at the start and the end.

Prints one JSON document and a Markdown table (medians over ``--rounds``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


#: CPU seconds (user + system) of each CLI run, by the label given to :func:`_cli`
CPU: dict[str, list[float]] = {}


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _cli(code: Path, env: dict[str, str], *args: str,
         label: str = "") -> tuple[float, dict[str, Any] | list[Any]]:
    started, cpu = time.monotonic(), _children_cpu()
    out = subprocess.run(
        [sys.executable, "-m", "vmkeep.cli", *args, "--json"],
        env=dict(env, PYTHONPATH=str(code)), cwd=str(code), capture_output=True, text=True,
    )
    wall = time.monotonic() - started
    if label:
        CPU.setdefault(label, []).append(_children_cpu() - cpu)
    if out.returncode != 0:
        raise SystemExit(f"vmkeep {' '.join(args)} failed: {out.stderr[-3000:]}")
    return wall, json.loads(out.stdout)


def _import_time(env: dict[str, str]) -> float:
    started, cpu = time.monotonic(), _children_cpu()
    subprocess.run([sys.executable, "-c", "import prefect"], env=env, check=True)
    CPU.setdefault("import", []).append(_children_cpu() - cpu)
    return time.monotonic() - started


async def _flow_runs(flow_name: str, after: float) -> list[Any]:
    """Runs of flow ``flow_name`` started after ``after`` (by flow: older code named runs at
    random)."""
    from datetime import UTC, datetime

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowFilter,
        FlowFilterName,
        FlowRunFilter,
        FlowRunFilterStartTime,
    )

    async with get_client() as client:
        return list(await client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
            flow_run_filter=FlowRunFilter(
                start_time=FlowRunFilterStartTime(after_=datetime.fromtimestamp(after, UTC)),
            ),
        ))


async def _task_runs(run_ids: list[Any]) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        out = []
        for run_id in run_ids:
            out += await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
        return out


def _step(name: str) -> tuple[str, str]:
    """(child label, step) of a task run name: ``small01: snapshot`` (children as task runs),
    ``snapshot-3fa`` (a subflow's task run, Prefect's random suffix) or ``disk 0 [ds] …``."""
    label, _, step = name.rpartition(": ")
    if re.search(r"-[0-9a-f]{3}$", step):
        step = step[:-4]
    return label, step


def _held_and_data(run_ids: list[Any], children: int) -> tuple[list[float], list[float]]:
    """Per VM: snapshot held (snapshot end → release start) and data (disk tasks), from the task
    runs of ``run_ids`` (the ``backup-vm`` subflows, or the ``backup-vms`` runs whose VMs are
    task runs labelled by VM)."""
    deadline = time.monotonic() + 60  # task runs arrive through events
    while True:
        tasks = asyncio.run(_task_runs(run_ids))
        by_vm: dict[Any, dict[str, Any]] = {}
        disks: dict[Any, list[Any]] = {}
        for t in tasks:
            if t.start_time and t.end_time:
                label, step = _step(t.name)
                by_vm.setdefault((t.flow_run_id, label), {})[step] = t
                if step.startswith(("disk ", "back-up-vm-disk")):
                    disks.setdefault((t.flow_run_id, label), []).append(t)
        complete = {k: v for k, v in by_vm.items() if {"snapshot", "release-snapshot"} <= set(v)}
        if len(complete) >= children or time.monotonic() > deadline:
            break
        time.sleep(1)
    held, data = [], []
    for key, named in complete.items():
        held.append((named["release-snapshot"].start_time - named["snapshot"].end_time)
                    .total_seconds())
        data.append(sum((t.end_time - t.start_time).total_seconds() for t in disks.get(key, [])))
    return held, data


def _worker_round(code: Path, env: dict[str, str], spec: dict[str, Any],
                  rounds: int) -> list[float]:
    """Deploy backup-vms from ``code`` to a process pool, run it ``rounds`` times on a worker;
    returns the flow-run durations."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from vmkeep.deployments import pools

    pools.ensure_pools(["lan"])
    deploy = subprocess.run(
        [sys.executable, "-c",
         "import sys; from prefect import flow;"
         "f = flow.from_source(source=sys.argv[1],"
         " entrypoint='vmkeep/flows/backup_vms.py:backup_vms');"
         "f.deploy(name='bench', work_pool_name='vmkeep-lan', print_next_steps=False)", str(code)],
        env=dict(env, PYTHONPATH=str(code)), capture_output=True, text=True)
    if deploy.returncode != 0:
        raise SystemExit(f"deploy failed: {deploy.stderr[-3000:]}")
    worker = pools.start_worker("lan", "bench", dict(env, PYTHONPATH=str(code),
                                                     PREFECT_LOGGING_LEVEL="WARNING"))
    try:
        with get_client(sync_client=True) as client:
            schema = client.read_deployment_by_name("backup-vms/bench").parameter_openapi_schema
        flat = "spec" not in (schema or {}).get("properties", {})
        common = {k: v for k, v in spec.items() if k not in ("vcenter", "vcenter_flat")}
        params = ({**common, **spec["vcenter_flat"]} if flat
                  else {"spec": {**common, "vcenter": spec["vcenter"]}})
        durations = []
        for _ in range(rounds + 1):  # the first run warms the worker's environment up
            run = run_deployment("backup-vms/bench", parameters=params, timeout=600)
            if run.state_type.value != "COMPLETED":
                raise SystemExit(f"worker run failed: {run.state.message}")
            durations.append((run.end_time - run.start_time).total_seconds())
        return durations[1:]
    finally:
        pools.stop_worker(worker)


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_rounded(v) for v in value]
    return value


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--vms", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--code", type=Path, default=ROOT)
    parser.add_argument("--workdir", type=Path, default=Path("bench-work/orchestration"))
    parser.add_argument("--before", type=Path, default=None)
    parser.add_argument("--no-worker", action="store_true")
    args = parser.parse_args()
    code = args.code.resolve()
    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    # no licence installed: the community tier (10 workloads) covers the bench's tiny VMs, in
    # every process alike (CLI runs and the worker's flow-run processes); its usage ledger and
    # config live in the work directory, never in the user's home
    base = dict(os.environ,
                VMKEEP_STATE_DIR=str(work / "state"), VMKEEP_CONFIG_DIR=str(work / "config"),
                PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
                PREFECT_LOGGING_LEVEL="WARNING", PREFECT_HOME=str(work / "prefect-client"),
                PREFECT_PROFILES_PATH=str(work / "profiles.toml"))
    for name in ("PREFECT_API_URL", "VMKEEP_LICENSE", "PREFECT_PROFILE"):
        base.pop(name, None)
    from vmkeep.deployments import prefect_server
    from vmkeep.lab import runner
    from vmkeep.storage.repository import Repository

    lab = runner.up(n_small=args.vms, port=0, state=work / "lab")
    server = prefect_server.start(work / "prefect")
    numbers: dict[str, Any] = {"code": str(code), "vms": args.vms, "rounds": args.rounds,
                               "loadavg_start": os.getloadavg()}
    try:
        repo = work / "repo"
        Repository.init(str(repo), image_chunk_size=256 * 1024)
        env = dict(base, VMKEEP_VC_USER=lab.user, VMKEEP_VC_PASSWORD=lab.password,
                   VMKEEP_REPO=str(repo), PREFECT_API_URL=server.api_url)
        os.environ["PREFECT_API_URL"] = server.api_url
        conn = ["--vcenter", lab.url, "--cafile", lab.cafile]
        many = ["backup", "vm", "small*", *conn, "--parallel", "1"]
        _cli(code, env, *many, "--no-prefect")  # full backups: warm-up
        one = ["backup", "vm", "small01", *conn]
        direct, orch, held, data = [], [], [], []
        direct1, orch1, imports, runs = [], [], [], []
        vm_direct, vm_orch = [], []  # each VM's own duration, measured inside the job
        before = args.before.resolve() if args.before else None
        b_orch, b_orch1, b_runs = [], [], []

        def before_round() -> None:
            assert before is not None
            started = time.time()
            b_orch.append(_cli(before, env, *many, "--prefect", label="before_many")[0])
            b_runs.extend((r.end_time - r.start_time).total_seconds()
                          for r in asyncio.run(_flow_runs("backup-vms", started)))
            b_orch1.append(_cli(before, env, *one, "--prefect", label="before_one")[0])

        for i in range(args.rounds):  # interleaved: the machine's load moves all alike
            if before is not None and i % 2 == 0:  # the other tree first in even rounds,
                before_round()                     # last in odd ones
            wall, out = _cli(code, env, *many, "--no-prefect", label="many_direct")
            direct.append(wall)
            vm_direct += [vm["duration_s"] for vm in out]
            started = time.time()
            wall, out = _cli(code, env, *many, "--prefect", label="many_prefect")
            orch.append(wall)
            vm_orch += [vm["duration_s"] for vm in out]
            children = asyncio.run(_flow_runs("backup-vm", started))  # subflows (older code)
            parents = asyncio.run(_flow_runs("backup-vms", started))
            runs += [(r.end_time - r.start_time).total_seconds() for r in parents]
            h, d = _held_and_data([r.id for r in (children or parents)], args.vms)
            held += h
            data += d
            direct1.append(_cli(code, env, *one, "--no-prefect", label="one_direct")[0])
            orch1.append(_cli(code, env, *one, "--prefect", label="one_prefect")[0])
            imports.append(_import_time(base))
            if before is not None and i % 2 == 1:
                before_round()
        n = args.vms
        med = statistics.median
        numbers["multi_direct_wall_s"] = med(direct)
        numbers["multi_prefect_wall_s"] = med(orch)
        numbers["prefect_import_s"] = med(imports)
        numbers["orchestration_per_vm_incl_import_s"] = (med(orch) - med(direct)) / n
        numbers["orchestration_per_vm_s"] = (
            med(orch) - med(direct) - numbers["prefect_import_s"]) / n
        numbers["multi_prefect_run_s"] = med(runs)
        numbers["orchestration_per_vm_run_s"] = (med(runs) - med(direct)) / n
        numbers["vm_job_direct_s"] = med(vm_direct)
        numbers["vm_job_prefect_s"] = med(vm_orch)
        numbers["orchestration_inside_vm_job_s"] = med(vm_orch) - med(vm_direct)
        numbers["snapshot_held_s"] = med(held)
        numbers["data_s"] = med(data)
        numbers["held_minus_data_s"] = med(h - d for h, d in zip(held, data, strict=True))
        numbers["one_vm_direct_s"] = med(direct1)
        numbers["one_vm_prefect_s"] = med(orch1)
        numbers["one_vm_extra_over_import_s"] = (
            numbers["one_vm_prefect_s"] - numbers["one_vm_direct_s"] - numbers["prefect_import_s"]
        )
        numbers["rounds_s"] = {"direct": direct, "prefect": orch, "one_direct": direct1,
                               "one_prefect": orch1, "import": imports}
        numbers["cpu_s"] = {k: med(v) for k, v in CPU.items()}
        numbers["one_vm_extra_cpu_over_import_s"] = (
            numbers["cpu_s"]["one_prefect"] - numbers["cpu_s"]["one_direct"]
            - numbers["cpu_s"]["import"])
        if before is not None:
            numbers["before"] = {
                "code": str(before),
                "multi_prefect_wall_s": med(b_orch),
                "multi_prefect_run_s": med(b_runs),
                "orchestration_per_vm_s": (med(b_orch) - med(direct) - med(imports)) / n,
                "orchestration_per_vm_run_s": (med(b_runs) - med(direct)) / n,
                "one_vm_prefect_s": med(b_orch1),
                "one_vm_extra_over_import_s": med(b_orch1) - med(direct1) - med(imports),
                "one_vm_extra_cpu_over_import_s": (
                    numbers["cpu_s"]["before_one"] - numbers["cpu_s"]["one_direct"]
                    - numbers["cpu_s"]["import"]),
                "rounds_s": {"prefect": b_orch, "one_prefect": b_orch1},
            }
        if not args.no_worker:
            spec = {"repo": str(repo), "vcenter": {"url": lab.url, "cafile": lab.cafile},
                    "vcenter_flat": {"vcenter": lab.url, "cafile": lab.cafile},
                    "patterns": ["small*"], "max_parallel": 1}
            try:
                worker = _worker_round(code, env, spec, args.rounds)
            except SystemExit as exc:  # report what was measured so far
                numbers["worker_error"] = str(exc)
            else:
                numbers["multi_worker_run_s"] = statistics.median(worker)
                numbers["worker_orchestration_per_vm_s"] = (
                    statistics.median(worker) - statistics.median(direct)) / n
    finally:
        numbers["loadavg_end"] = os.getloadavg()
        server.stop()
        runner.down(work / "lab")
    print(json.dumps(_rounded(numbers), indent=2))
    print("\n| measurement (median) | value | goal |\n|---|---|---|")
    rows = [
        ("orchestration per VM in backup-vms (in-process; CLI wall − direct − import) ÷ VMs",
         "orchestration_per_vm_s", "≤ 0.5 s"),
        ("the same with Prefect's import spread over the VMs",
         "orchestration_per_vm_incl_import_s", ""),
        ("orchestration per VM in backup-vms (in-process; flow-run duration − direct wall) ÷ VMs",
         "orchestration_per_vm_run_s", "≤ 0.5 s"),
        ("inside one VM's job (its duration_s, orchestrated − direct)",
         "orchestration_inside_vm_job_s", ""),
        ("orchestration per VM in backup-vms (worker)", "worker_orchestration_per_vm_s",
         "≤ 0.5 s"),
        ("one-VM CLI: --prefect − --no-prefect − Prefect import", "one_vm_extra_over_import_s",
         "≤ 0.5 s"),
        ("the same in CPU seconds (user + system)", "one_vm_extra_cpu_over_import_s", ""),
        ("Prefect import", "prefect_import_s", ""),
        ("snapshot held − data time (per VM, orchestrated)", "held_minus_data_s", "≤ 0.3 s"),
    ]
    for label, key, goal in rows:
        if key in numbers:
            old = numbers.get("before", {}).get(key)
            was = f" (before: {old:.2f} s)" if isinstance(old, float) else ""
            print(f"| {label} | {numbers[key]:.2f} s{was} | {goal} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
