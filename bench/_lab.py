"""What the ESX-lab benchmarks share: their command line, a fresh work folder, the lab, and one
backup of ``linux01``.

    args = lab_args("nfc")                  # --workdir bench-work/nfc, --rounds 3
    work = fresh_workdir(args.workdir)      # emptied; vmkeep state inside it, no Prefect API
    with lab_up(work) as (lab, conn):       # one small VM set; conn = vcenter/cafile keywords
        point = backup_linux01(new_repo(work / "repo"), conn, quiesce=False)

Imported by the bench scripts as a sibling module (``python bench/bench_x.py`` puts ``bench/``
first on ``sys.path``).  vmkeep is imported only inside the functions, after
:func:`fresh_workdir` has set the environment it reads.
"""

from __future__ import annotations

import argparse
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def lab_args(name: str) -> argparse.ArgumentParser:
    """A parser with ``--workdir`` (default ``bench-work/NAME``) and ``--rounds`` (3)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", type=Path, default=Path("bench-work") / name)
    parser.add_argument("--rounds", type=int, default=3)
    return parser


def fresh_workdir(workdir: Path) -> Path:
    """Empty ``workdir`` and point vmkeep's state into it; runs are direct (no Prefect API)."""
    work = workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.update(
        VMKEEP_STATE_DIR=str(work / "vmkeep-state"), PREFECT_SERVER_ANALYTICS_ENABLED="false"
    )
    os.environ.pop("PREFECT_API_URL", None)
    return work


@contextmanager
def lab_up(work: Path) -> Iterator[tuple[Any, dict[str, str]]]:
    """The ESX lab (one set of small VMs, state under ``work/lab``) with its credentials in the
    environment: yields its info and the ``vcenter``/``cafile`` keywords of a flow; stopped on
    exit."""
    from vmkeep.lab import runner

    lab = runner.up(n_small=1, port=0, state=work / "lab")
    try:
        os.environ.update(VMKEEP_VC_USER=lab.user, VMKEEP_VC_PASSWORD=lab.password)
        yield lab, {"vcenter": lab.url, "cafile": lab.cafile}
    finally:
        runner.down(work / "lab")


def new_repo(path: Path) -> Path:
    """A new repository at ``path`` (created with the environment's settings)."""
    from vmkeep.storage.repository import Repository

    Repository.init(str(path))
    return path


def backup_linux01(repo: Path, conn: dict[str, str], **options: Any) -> Any:
    """Back ``linux01`` up into ``repo`` (a direct run, ``options`` as the flow takes them);
    its summary."""
    from vmkeep.flows.backup_vm import backup_vm
    from vmkeep.flows.run import run_flow

    return run_flow(backup_vm, False, repo=str(repo), vm="linux01", **options, **conn)
