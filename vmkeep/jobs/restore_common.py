"""What the restore jobs share: opening the point, the vCenter session, the half-restored VM,
progress and the files report.

* :func:`open_point` — refuse secret parameters, open the repository, load the point, check its
  kind (read-only: restores take no lock and no licence seat);
* :func:`vcenter` — one logged-in session for the job, closed however the job ends;
* :class:`HalfRestored` — a VM a restore is creating (``restore vm``'s new VM, ``restore
  disk``'s helper VM): marked half-restored from creation (:mod:`vmkeep.vsphere.restore_marker`,
  the sweep removes it after a kill -9), the mark kept fresh while disks upload; on any failure
  the NFC import lease is aborted and the VM destroyed — an existing VM is never touched;
* :class:`ReplacedVM` — the existing VM ``restore vm --overwrite`` replaces: set aside
  (marked, powered off, renamed) before the new VM is created, destroyed only once the new one is
  complete, put back on any failure (:mod:`vmkeep.vsphere.replace`);
* :func:`byte_progress` — the runtime's progress, closed on success and on failure;
* :func:`files_row` — the one-row ``restore-files`` report of a files summary;
  :func:`shown_paths` — a few selected paths for a step name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from types import TracebackType
from typing import Any

from vmkeep.errors import VmkeepError
from vmkeep.jobs.restore_specs import _FromPoint
from vmkeep.runtime.base import Progress, Runtime
from vmkeep.storage.manifest import RestorePoint
from vmkeep.storage.repository import Repository
from vmkeep.tasks.source_credentials import refuse_secret_parameters
from vmkeep.vsphere.target import VCenterTarget


def open_point(
    spec: _FromPoint, kinds: tuple[str, ...] | None = None, why: str = ""
) -> tuple[Repository, RestorePoint]:
    """The repository and restore point ``spec`` names; ``WrongPointKind`` when the point's kind
    is not one of ``kinds`` (``why`` says what it lacks)."""
    refuse_secret_parameters(repo=spec.repo, storage_options=spec.storage_options)
    repository = Repository.open(spec.repo, spec.storage_options)
    point = repository.load_point(spec.point)
    if kinds is not None and point.kind not in kinds:
        from vmkeep.storage.errors import WrongPointKind

        raise WrongPointKind(point.short_id, point.kind, why)
    return repository, point


class MalwareFound(VmkeepError):
    """Restore refused: {}"""

    exit_code = 13


def scan_before_restore(
    rt: Runtime, repository: Repository, point: RestorePoint, rules: list[str]
) -> dict[str, Any] | None:
    """Secure restore (Veeam's): scan every guest file of ``point`` with the YARA ``rules``
    before anything is created (:func:`vmkeep.jobs.verify.verify_yara_step`, recorded beside the
    point).  A match refuses the restore (:class:`MalwareFound`, exit 13) naming the files;
    returns what the scan found, or None without rules."""
    if not rules:
        return None
    from vmkeep.jobs.verify import verify_yara_step

    scan = rt.step(verify_yara_step, repository, point.id, rules,
                   step_name=f"scan {point.short_id}")
    if scan["matches"]:
        shown = ", ".join(f"{m['path']} ({', '.join(m['rules'])})" for m in scan["matches"][:3])
        more = f" and {len(scan['matches']) - 3} more" if len(scan["matches"]) > 3 else ""
        raise MalwareFound(f"{len(scan['matches'])} file(s) of {point.short_id} match YARA rules: "
                           f"{shown}{more}; restore an older point (vmkeep verify yara finds a "
                           "clean one)")
    for problem in scan["errors"]:
        rt.log.warning("scan: %s", problem)
    return {"files_scanned": scan["files_scanned"], "rules": scan["rules"], "matches": 0,
            "errors": len(scan["errors"])}


@contextlib.contextmanager
def vcenter(target: VCenterTarget) -> Iterator[Any]:
    """A logged-in vSphere session (TLS verified per ``target``), closed when the block ends."""
    from vmkeep.tasks.vcenter import open_session

    session = open_session(target)
    try:
        yield session
    finally:
        session.close()


@contextlib.contextmanager
def byte_progress(rt: Runtime, description: str, total: int) -> Iterator[Progress]:
    """``rt.progress(description, total)``, closed — as failed when the block raises."""
    progress = rt.progress(description, total)
    try:
        yield progress
    except BaseException:
        progress.close(failed=True)
        raise
    progress.close()


class HalfRestored:
    """The VM a restore creates, undone unless the restore completes (module docstring).

    ``with HalfRestored(rt, session) as made:`` — pass ``made.mark`` to the step that creates
    the VM, then :meth:`created`; :meth:`uploaded` once the disks are in (completes the lease,
    stops refreshing the mark); :meth:`keep` when the VM is no longer this restore's to destroy.
    """

    def __init__(self, rt: Runtime, session: Any) -> None:
        from vmkeep.vsphere.restore_marker import new_mark

        self.session = session
        self.mark = new_mark(rt.run_id)
        self.vm: Any = None
        self.lease: Any = None
        self.keeper: Any = None

    def __enter__(self) -> HalfRestored:
        return self

    def created(self, vm: Any, lease: Any = None) -> None:
        """The VM exists (with its open import ``lease``): refresh its mark until uploaded."""
        from vmkeep.vsphere.restore_marker import MarkKeeper

        self.vm, self.lease = vm, lease
        self.keeper = MarkKeeper(self.session, vm, self.mark.run_id)

    def uploaded(self) -> None:
        """Every disk is in: complete the import lease, stop refreshing the mark."""
        if self.lease is not None:
            self.lease.complete()
            self.lease = None
        if self.keeper is not None:
            self.keeper.stop()

    def keep(self) -> None:
        """The VM is no longer ours to destroy on failure (destroyed or complete)."""
        self.vm = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.keeper is not None:
            self.keeper.stop()
        if exc_type is None:
            return
        if self.lease is not None:
            self.lease.abort(f"vmkeep restore failed: {exc_type.__name__}")
        if self.vm is not None:
            from vmkeep.vsphere.waiter import wait_for_task

            with contextlib.suppress(Exception):
                wait_for_task(
                    self.session, self.session.call(self.vm.Destroy_Task), what="destroy"
                )


class ReplacedVM:
    """The VM called ``name`` that a restore with ``overwrite`` replaces (module docstring).

    ``with ReplacedVM(rt, session, name, overwrite, folder) as replaced:`` sets it aside —
    the VM of that name in ``folder``, where the new one goes, else the only VM of that name
    (:func:`vmkeep.vsphere.vm_lookup.vm_to_replace`; nothing happens without ``overwrite`` or
    without such a VM); :meth:`remove` once the new VM is complete; leaving the block with an
    exception before that puts it back.  Nest the :class:`HalfRestored` block inside, so that
    the new VM is gone before the name is given back.
    """

    def __init__(self, rt: Runtime, session: Any, name: str, overwrite: bool,
                 folder: Any) -> None:
        self.rt, self.session, self.name, self.overwrite = rt, session, name, overwrite
        self.folder = folder
        self.aside: Any = None

    def __enter__(self) -> ReplacedVM:
        if self.overwrite:
            from vmkeep.tasks.restore import set_aside_task

            self.aside = self.rt.step(set_aside_task, self.session, self.name, self.rt.run_id,
                                      self.folder,
                                      step_name=f"set aside {self.name}")
        return self

    def remove(self) -> list[str]:
        """Destroy the replaced VM; a failure is a warning (the new VM is complete)."""
        from vmkeep.errors import VmkeepError
        from vmkeep.tasks.restore import remove_replaced_task

        aside, self.aside = self.aside, None
        if aside is None:
            return []
        try:
            self.rt.step(remove_replaced_task, self.session, aside,
                         step_name=f"remove replaced {self.name}")
        except VmkeepError as exc:
            return [f"the replaced VM is left as {aside.aside!r} ({exc.get_message()}): "
                    "remove it when no longer needed"]
        return []

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None or self.aside is None:
            return
        from vmkeep.tasks.restore import put_back_task

        try:
            self.rt.step(put_back_task, self.session, self.aside,
                         step_name=f"put back {self.name}")
        except Exception as error:  # the restore's own error is the one to raise
            self.rt.log.error(
                "could not put %s back (%s): it is %r; vmkeep sweep puts it back", self.name,
                error, self.aside.aside,
            )
        else:
            self.rt.log.warning("restore failed: %s is back as it was", self.name)


def files_row(summary: dict[str, Any]) -> dict[str, Any]:
    """The report row of a files restore: the summary, ``skipped`` counted rather than listed."""
    row = {k: v for k, v in summary.items() if k != "skipped"}
    row["skipped"] = len(summary.get("skipped", []))
    return row


def shown_paths(paths: list[str], most: int = 2) -> str:
    """A few of ``paths`` for a step name (task names stay short)."""
    more = len(paths) - most
    return ", ".join(paths[:most]) + (f" (+{more} more)" if more > 0 else "")
