"""``vmkeep ls``: what a restore point holds — its disks and volumes, or a directory's entries.

Contract:

- :func:`describe_point` -> ``{"point": {...}, "vm": {...} | None, "disks": [...], "volumes":
  [...], "warnings"}`` for image and VM points (volumes as :meth:`VolumeInfo.to_json`: ``name``,
  ``fs``, ``size``, ``disk`` …; ``vm`` for VM points with a saved configuration: what a restore
  recreates — ``guest_id``, ``num_cpu``, ``memory_mb``, ``firmware``, ``host``, ``nics``
  (``type``, ``network``, ``mac``, ``address_type``), so a ``--network`` mapping can be written
  before the restore; each disk's ``swap``: the ``--exclude-swap`` record, or ``None``).  Reads
  partition tables and volume heads only.
- :func:`list_image_path` -> rows of the directory at ``path`` of a volume (a file or symlink
  path gives its own row), sorted by name.  One row (:func:`entry_row`): ``name``, ``path``,
  ``type`` (``file``, ``dir``, ``symlink``, ``other``), ``kind`` (``chr`` … for ``other``),
  ``size``, ``mtime`` (ISO 8601 UTC), ``mtime_ns``, ``mode`` (permission bits), ``mode_text``,
  ``uid``, ``gid``, ``link`` (symlink target, as stored) and ``streams`` (NTFS alternate data
  streams).
- :func:`list_files_path` does the same for points of kind ``files`` through
  :mod:`vmkeep.guestfiles.browse` (imported lazily).
"""

from __future__ import annotations

import stat
from datetime import UTC, datetime
from typing import Any

from vmkeep.browse import fastlist
from vmkeep.browse.errors import FilePointsUnavailable
from vmkeep.browse.point import PointImage
from vmkeep.disks import Entry
from vmkeep.disks.errors import DiskError
from vmkeep.storage.file_manifest import FilePoint
from vmkeep.storage.repository import Repository


def iso(mtime_ns: int) -> str:
    try:
        return datetime.fromtimestamp(mtime_ns / 1e9, UTC).isoformat()
    except (OverflowError, OSError, ValueError):  # hostile timestamps
        return datetime.fromtimestamp(0, UTC).isoformat()


def entry_row(e: Entry) -> dict[str, Any]:
    return {
        "name": e.name,
        "path": e.path,
        "type": e.type,
        "kind": e.kind,
        "size": e.size,
        "mtime": iso(e.mtime_ns),
        "mtime_ns": e.mtime_ns,
        "mode": stat.S_IMODE(e.mode),
        "mode_text": stat.filemode(e.mode),
        "uid": e.uid,
        "gid": e.gid,
        "link": e.link,
        "streams": list(e.streams),
        "elsewhere": e.elsewhere or None,
    }


def point_header(img: PointImage) -> dict[str, Any]:
    p = img.point
    return {
        "id": p.id,
        "short_id": p.short_id,
        "name": p.name,
        "kind": p.kind,
        "time": p.time.isoformat(),
    }


def describe_point(img: PointImage) -> dict[str, Any]:
    volumes = [v.to_json() for v in img.volumes()]
    disks = [
        {"index": d.index, "name": d.name, "size": d.size, "label": d.extra.get("label"),
         "node": d.extra.get("node"), "swap": d.extra.get("swap"),
         "deleted": d.extra.get("deleted")}
        for d in img.point.disks
    ]
    return {
        "point": point_header(img),
        "vm": vm_summary(img.point.meta.get("vm_config"), img.point.meta.get("vm_tags")),
        "disks": disks,
        "excluded_disks": list(img.point.meta.get("excluded_disks") or []),
        "volumes": volumes,
        "warnings": list(img.warnings),
    }


def vm_summary(config: Any, tags: Any = None) -> dict[str, Any] | None:
    """What a restore of a VM point recreates (see the module docstring); ``None`` without a
    saved configuration (image points, VMs backed up before configurations were saved)."""
    if not isinstance(config, dict):
        return None
    nics = [{"type": str(n.get("type", "")).removeprefix("Virtual"), "network": n.get("network"),
             "mac": n.get("mac"), "address_type": n.get("address_type")}
            for n in config.get("nics", []) if isinstance(n, dict)]
    return {"guest_id": config.get("guest_id"), "num_cpu": config.get("num_cpu"),
            "memory_mb": config.get("memory_mb"), "firmware": config.get("firmware"),
            "host": config.get("host"), "nics": nics, "tags": list(tags or [])}


def list_image_path(img: PointImage, volume: str, path: str) -> list[dict[str, Any]]:
    fs = img.filesystem(volume)
    top = fs.stat(path)
    is_dir = top.type == "dir"
    if top.type == "symlink":
        try:
            is_dir = fs.stat(path, follow=True).type == "dir"
        except DiskError:
            is_dir = False
    if not is_dir:
        return [entry_row(top)]
    entries = fastlist.listdir(fs, path)
    if entries is None:
        entries = fs.listdir(path)
    return sorted((entry_row(e) for e in entries), key=lambda r: r["name"])


def list_files_path(repo: Repository, ref: str | FilePoint, path: str) -> list[dict[str, Any]]:
    try:
        from vmkeep.guestfiles.browse import list_dir
    except ImportError as exc:  # pragma: no cover - guestfiles ships with vmkeep
        raise FilePointsUnavailable(str(exc)) from None
    rows = []
    for e in list_dir(repo, ref, path or "/"):
        row = e.to_json()
        row["mtime_ns"] = e.mtime_ns
        row.setdefault("kind", "")
        row.setdefault("streams", [])
        row.setdefault("elsewhere", None)
        rows.append(row)
    return rows
