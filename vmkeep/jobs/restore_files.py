"""Job: restore files out of a restore point — into a local folder or into a running guest.

Open the repository → look at the point's kind → one step per destination:

* image / VM points: ``files <paths> to <folder>`` (the safe writer) or ``find VM <vm>`` +
  ``files <paths> to <VM:DIR>`` (guest operations over the LAN).  ``paths`` are
  ``VOLUME/PATH`` (``p1/etc/hosts``, ``disk1-p2/data``; a bare ``VOLUME`` = the whole volume).
* image / VM points into ``sftp://`` / ``smb://`` URLs: ``files <paths> to <URL>`` (the same
  step, :func:`vmkeep.browse.remote.restore_image_paths_to_url`).
* file points: the file-point restore (:func:`vmkeep.jobs.restore_file_point.restore_paths`, in
  this run) for local folders and ``sftp://`` / ``smb://`` URLs (``paths`` are ``/PATH``), or its
  tree uploaded into the guest.
* ``target`` ``-`` (either kind): ``dump <paths>`` onto standard output — one regular file as
  its bytes, else a tar archive (:mod:`vmkeep.disks.dump`; restic's ``dump``).

A local target folder is created when missing (and removed again, if still empty, when the
restore fails: a mistyped volume or path leaves nothing behind).  Read-only on the repository
(no licence check, no lock).  Returns the summary (the CLI's JSON); per-file problems are listed
in ``skipped`` and counted in ``errors`` — the job does not raise for them.  vCenter and guest
credentials never travel in the spec (see :mod:`vmkeep.tasks.vcenter`).  A restore into a folder
imports neither Prefect nor pyVmomi (the guest path is imported when used).
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from vmkeep.browse.point import split_volume_path
from vmkeep.disks.restore_model import DATA_LOSS
from vmkeep.jobs.restore_common import byte_progress, files_row, shown_paths
from vmkeep.jobs.restore_specs import RestoreFilePointSpec, RestoreFilesSpec
from vmkeep.runtime.base import Runtime
from vmkeep.storage.disk_restore import refuse_inside_repository, target_folder
from vmkeep.storage.file_manifest import FilePoint, load_any_point
from vmkeep.storage.manifest import RestorePoint
from vmkeep.storage.repository import Repository
from vmkeep.storage.stream_out import STDOUT, STDOUT_NAME
from vmkeep.tasks.image import dump_image_files, restore_image_files
from vmkeep.tasks.source_credentials import refuse_secret_parameters


def selections(paths: list[str]) -> list[tuple[str, str]]:
    """``VOLUME/PATH`` strings -> ``(volume, /path)`` pairs."""
    return [split_volume_path(p) for p in paths]


def restore_files(spec: RestoreFilesSpec, rt: Runtime) -> dict[str, Any]:
    """Restore ``spec.paths`` of ``spec.point`` into the folder ``spec.target`` or the guest
    ``spec.guest``; see the module docstring."""
    from vmkeep.disks.restore_model import refuse_ownership
    from vmkeep.guestfiles.backup import remote_protocol

    started = time.monotonic()
    if spec.target == STDOUT:
        refuse_ownership(spec.ownership, STDOUT_NAME, local=False)
        return _restore(spec, rt, started)
    local = False
    if spec.target is not None:
        refuse_inside_repository(spec.repo, spec.target)
        local = remote_protocol(spec.target, "target") is None  # a bad URL: before any reading
    refuse_ownership(spec.ownership, spec.target or spec.guest or "", local=local)
    folder = spec.target.removeprefix("file://") if local and spec.target else None
    with target_folder(folder) if folder else contextlib.nullcontext():
        return _restore(spec, rt, started)


def _restore(spec: RestoreFilesSpec, rt: Runtime, started: float) -> dict[str, Any]:
    refuse_secret_parameters(
        repo=spec.repo, target=spec.target, storage_options=spec.storage_options
    )
    repository = Repository.open(spec.repo, spec.storage_options)
    point = load_any_point(repository, spec.point)
    point_id, kind = point.id, point.kind
    where = spec.target or spec.guest or ""
    if spec.guest is not None:
        summary = _to_guest(rt, spec, repository, point)
    elif spec.target == STDOUT:
        summary = _dump(rt, spec, repository, point)
    elif isinstance(point, FilePoint):
        summary = _file_point_local(rt, spec, repository, point)
    else:
        with byte_progress(rt, f"files of {point.short_id} to {where}", 0) as bar:
            summary = rt.step(
                restore_image_files,
                repository,
                point,
                selections(spec.paths),
                spec.target,
                overwrite=spec.overwrite,
                progress=bar.advance,
                ownership=spec.ownership,
                step_name=f"files {shown_paths(spec.paths)} to {where}",
            )
    summary["kind"] = kind
    summary["duration_s"] = round(time.monotonic() - started, 3)
    rt.log.info(
        "restored %s file(s) of %s to %s, %d skipped",
        summary.get("files", 0), point_id[:12], where, len(summary.get("skipped", [])),
    )
    rt.publish_table("restore-files", [files_row(summary)], f"Restore of {point_id[:8]}")
    return summary


def _dump(
    rt: Runtime, spec: RestoreFilesSpec, repository: Repository, point: RestorePoint | FilePoint
) -> dict[str, Any]:
    with byte_progress(rt, f"files of {point.short_id} to {STDOUT_NAME}", 0) as bar:
        name = f"dump {shown_paths(spec.paths)}"
        if isinstance(point, FilePoint):
            from vmkeep.tasks.files import dump_file_paths

            out: dict[str, Any] = rt.step(dump_file_paths, repository, point, list(spec.paths),
                                          progress=bar.advance, step_name=name)
        else:
            out = rt.step(dump_image_files, repository, point, selections(spec.paths),
                          progress=bar.advance, step_name=name)
    out.setdefault(
        "errors", len([w for w in out.get("skipped", []) if w.get("reason") in DATA_LOSS])
    )
    return out


def _file_point_local(
    rt: Runtime, spec: RestoreFilesSpec, repository: Repository, point: FilePoint
) -> dict[str, Any]:
    try:
        from vmkeep.jobs.restore_file_point import restore_loaded
    except ImportError as exc:  # pragma: no cover - guestfiles ships with vmkeep
        from vmkeep.browse.errors import FilePointsUnavailable

        raise FilePointsUnavailable(str(exc)) from None
    files_spec = RestoreFilePointSpec(
        repo=spec.repo,
        point=point.id,
        target=spec.target or "",
        paths=spec.paths,
        overwrite=spec.overwrite,
        storage_options=spec.storage_options,
        target_options=None,
        preserve_owner=spec.preserve_owner,
        keep_setid=spec.keep_setid,
    )
    out = restore_loaded(files_spec, rt, repository, point)
    out.setdefault(
        "errors", len([w for w in out.get("skipped", []) if w.get("reason") in DATA_LOSS])
    )
    return out


def _to_guest(
    rt: Runtime, spec: RestoreFilesSpec, repository: Repository, point: RestorePoint | FilePoint
) -> dict[str, Any]:
    from vmkeep.browse.guest import GuestTarget
    from vmkeep.browse.point import PointImage
    from vmkeep.jobs.restore_common import vcenter
    from vmkeep.tasks.restore import restore_to_guest
    from vmkeep.tasks.vcenter import resolve_credentials
    from vmkeep.tasks.vm import find_vm_task

    assert spec.guest is not None and spec.vcenter is not None  # the spec's rule
    target = GuestTarget.parse(spec.guest)
    creds = resolve_credentials(spec.guest_user, spec.guest_password_file, None, "GUEST")
    point_id = point.id
    img: PointImage | None = None
    if isinstance(point, FilePoint):
        try:
            from vmkeep.guestfiles.tree import PointTree
        except ImportError as exc:  # pragma: no cover
            from vmkeep.browse.errors import FilePointsUnavailable

            raise FilePointsUnavailable(str(exc)) from None
        sources: list[tuple[str, Any, list[str]]] = [
            ("", PointTree(repository, point), spec.paths)
        ]
    else:
        img = PointImage(repository, point)
        grouped: dict[str, list[str]] = {}
        for volume, path in selections(spec.paths):
            grouped.setdefault(img.volume(volume).name, []).append(path)
        sources = [(f"{vol}:", img.filesystem(vol), ps) for vol, ps in grouped.items()]
    try:
        with vcenter(spec.vcenter) as session, byte_progress(
            rt, f"files of {point_id[:8]} to {spec.guest}", 0
        ) as bar:
            vm = rt.step(find_vm_task, session, target.vm, step_name=f"find VM {target.vm}")
            out: dict[str, Any] = rt.step(
                restore_to_guest,
                session,
                vm.ref,
                creds,
                sources,
                target,
                spec.overwrite,
                bar.advance,
                step_name=f"files {shown_paths(spec.paths)} to {spec.guest}",
            )
        if img is not None:
            out["chunks_fetched"] = img.fetches
    finally:
        if img is not None:
            img.close()
    out["point"] = point_id
    return out
