"""Flow: restore files out of a restore point — into a local folder or into a running guest.

DAG: open repository → look at the point's kind → one task per destination:

* image / VM points: ``restore-image-files`` (local folder, through the safe writer) or
  ``find-vm`` + ``restore-files-to-guest`` (guest operations over the LAN).  ``paths`` are
  ``VOLUME/PATH`` (``p1/etc/hosts``, ``disk1-p2/data``; a bare ``VOLUME`` = the whole volume).
* file points: the file-backup flow ``restore-file-point`` as a subflow for local folders
  (``paths`` are ``/PATH``), or its tree uploaded into the guest.

A local target folder is created when missing.  Read-only on the repository (no licence check,
no lock).  Returns the summary (the CLI's JSON);
per-file problems are listed in ``skipped`` and counted in ``errors`` — the flow does not raise
for them.  vCenter and guest credentials never travel as parameters (see
:mod:`vmkeep.tasks.vcenter`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from vmkeep.browse.errors import FilePointsUnavailable
from vmkeep.browse.guest import GuestTarget
from vmkeep.browse.point import PointImage, point_kind, split_volume_path
from vmkeep.disks.restore_model import DATA_LOSS
from vmkeep.storage.disk_restore import make_target_folder
from vmkeep.storage.repository import Repository
from vmkeep.tasks.restore import restore_image_files, restore_to_guest
from vmkeep.tasks.runtime import direct_mode, flow, publish_table, step
from vmkeep.tasks.source_credentials import refuse_secret_parameters
from vmkeep.tasks.vcenter import VCenter, open_session, resolve_credentials
from vmkeep.tasks.vm import find_vm_task


def selections(paths: list[str]) -> list[tuple[str, str]]:
    """``VOLUME/PATH`` strings -> ``(volume, /path)`` pairs."""
    return [split_volume_path(p) for p in paths]


@flow(name="restore-files", persist_result=False, log_prints=False)
def restore_files(
    repo: str,
    point: str,
    paths: list[str],
    target: str | None = None,
    guest: str | None = None,
    vcenter: str | None = None,
    user: str | None = None,
    password_file: str | None = None,
    password_block: str | None = None,
    cafile: str | None = None,
    thumbprint: str | None = None,
    insecure: bool = False,
    guest_user: str | None = None,
    guest_password_file: str | None = None,
    overwrite: bool = False,
    storage_options: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Restore ``paths`` of ``point`` into the folder ``target`` or the guest ``guest``
    (``VM:GUEST_DIR``, with ``vcenter`` …); see the module docstring."""
    started = time.monotonic()
    if (target is None) == (guest is None):
        from vmkeep.errors import UsageError

        raise UsageError("restore files: give exactly one of a target folder or a guest")
    if target is not None and "://" not in target:
        make_target_folder(target)
    refuse_secret_parameters(repo=repo, target=target, storage_options=storage_options)
    repository = Repository.open(repo, storage_options)
    point_id, kind = point_kind(repository, point)
    if guest is not None:
        vc = VCenter(
            vcenter or "", user, password_file, password_block, cafile, thumbprint, insecure
        )
        summary = _to_guest(
            repository,
            point_id,
            kind,
            paths,
            GuestTarget.parse(guest),
            vc,
            guest_user,
            guest_password_file,
            overwrite,
            progress,
        )
    elif kind == "files":
        summary = _file_point_local(
            repo, point_id, paths, target or "", overwrite, storage_options, progress
        )
    else:
        restore_point = repository.load_point(point_id)
        summary = step(
            restore_image_files,
            repository,
            restore_point,
            selections(paths),
            target,
            overwrite,
            progress,
        )
    summary["kind"] = kind
    summary["duration_s"] = round(time.monotonic() - started, 3)
    row = {k: v for k, v in summary.items() if k != "skipped"}
    row["skipped"] = len(summary.get("skipped", []))
    publish_table("restore-files", [row], f"Restore of {point_id[:8]}")
    return summary


def _file_point_local(
    repo: str,
    point_id: str,
    paths: list[str],
    target: str,
    overwrite: bool,
    storage_options: dict[str, Any] | None,
    progress: Callable[[int], None] | None,
) -> dict[str, Any]:
    try:
        from vmkeep.flows.restore_file_point import restore_file_point
    except ImportError as exc:  # pragma: no cover - guestfiles ships with vmkeep
        raise FilePointsUnavailable(str(exc)) from None
    params: dict[str, Any] = {
        "repo": repo,
        "point": point_id,
        "target": target,
        "paths": paths or ["/"],
        "overwrite": overwrite,
        "storage_options": storage_options,
        "progress": progress,
    }
    out: dict[str, Any] = (
        restore_file_point.fn(**params) if direct_mode() else restore_file_point(**params)
    )
    out.setdefault(
        "errors", len([w for w in out.get("skipped", []) if w.get("reason") in DATA_LOSS])
    )
    return out


def _to_guest(
    repository: Repository,
    point_id: str,
    kind: str,
    paths: list[str],
    target: GuestTarget,
    vc: VCenter,
    guest_user: str | None,
    guest_password_file: str | None,
    overwrite: bool,
    progress: Callable[[int], None] | None,
) -> dict[str, Any]:
    creds = resolve_credentials(guest_user, guest_password_file, None, "GUEST")
    img: PointImage | None = None
    if kind == "files":
        try:
            from vmkeep.guestfiles.tree import PointTree
            from vmkeep.storage.file_manifest import load_file_point
        except ImportError as exc:  # pragma: no cover
            raise FilePointsUnavailable(str(exc)) from None
        sources: list[tuple[Any, list[str]]] = [
            (PointTree(repository, load_file_point(repository, point_id)), paths or ["/"])
        ]
    else:
        img = PointImage(repository, repository.load_point(point_id))
        grouped: dict[str, list[str]] = {}
        for volume, path in selections(paths):
            grouped.setdefault(img.volume(volume).name, []).append(path)
        sources = [(img.filesystem(vol), ps) for vol, ps in grouped.items()]
    session = open_session(vc)
    try:
        vm = step(find_vm_task, session, target.vm)
        out: dict[str, Any] = step(
            restore_to_guest, session, vm.ref, creds, sources, target, overwrite, progress
        )
        if img is not None:
            out["chunks_fetched"] = img.fetches
    finally:
        session.close()
        if img is not None:
            img.close()
    out["point"] = point_id
    return out
