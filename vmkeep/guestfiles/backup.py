"""File-level backup of one source tree into a repository, as plain Python (tasks wrap it).

Steps: :func:`open_source` (a local path, or an ``sftp://`` / ``smb://`` URL through fsspec) →
:func:`previous_point` (the newest file point of the same name: change detection) →
:func:`vmkeep.storage.file_backup.backup_files` (packs and index durable) →
:func:`commit_file_point` (the manifest, last; one atomic put).  A crash before the last step
leaves no restore point and at worst unreferenced packs for prune.

Sources are described without credentials: :func:`redact` strips any password from a URL before
it is stored in a manifest, shown or logged (pass secrets in ``storage_options``).
"""

from __future__ import annotations

import socket
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from vmkeep import clock
from vmkeep.errors import UsageError
from vmkeep.guestfiles.excludes import Excludes
from vmkeep.guestfiles.local import LocalSource
from vmkeep.storage.file_backup import FileBackupResult, FileSource
from vmkeep.storage.file_backup import default_workers as file_backup_workers
from vmkeep.storage.file_manifest import (
    FilePoint,
    latest_file_point,
    save_file_point,
)
from vmkeep.storage.repository import Repository

REMOTE_PROTOCOLS = ("sftp", "ssh", "smb")


def is_url(source: str) -> bool:
    return "://" in source


def remote_protocol(location: str, what: str = "source") -> str | None:
    """``None`` for a local path (or ``file://``); else the protocol of URL ``location`` (the
    ``what``: source or target), a :class:`UsageError` unless it is one vmkeep reads and writes
    files over, written in full (host, port)."""
    from vmkeep.storage.backend import check_url

    if not is_url(location) or location.startswith("file://"):
        return None
    scheme = location.split("://", 1)[0].lower()
    if scheme not in REMOTE_PROTOCOLS:
        raise UsageError(f"unsupported {what} {scheme}://…: use a local path, sftp:// or smb://")
    check_url(location, what)
    return scheme


def redact(source: str) -> str:
    """``source`` without a password (``sftp://user:secret@h/p`` → ``sftp://user@h/p``)."""
    if not is_url(source):
        return source
    parts = urlsplit(source)
    if parts.password is None:
        return source
    host = parts.hostname or ""
    netloc = (f"{parts.username}@" if parts.username else "") + host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def client_name(source: str) -> str:
    """The default client label: the URL's host, else this host (the licence counts the source's
    machine identity instead, :func:`vmkeep.licensing.identity.file_source_id`)."""
    if is_url(source):
        return urlsplit(source).hostname or "unknown"
    return socket.gethostname()


def open_source(
    source: str,
    storage_options: dict[str, Any] | None = None,
    excludes: list[str] | tuple[str, ...] = (),
    *,
    one_file_system: bool = False,
    exclude_caches: bool = True,
) -> FileSource:
    """A :class:`FileSource` for a local path or an ``sftp://`` / ``smb://`` URL."""
    patterns = Excludes(list(excludes))
    scheme = remote_protocol(source)
    if scheme is None:
        path = source.removeprefix("file://")
        return LocalSource(path, patterns, one_file_system=one_file_system,
                           exclude_caches=exclude_caches)
    if one_file_system:
        raise UsageError(f"--one-file-system needs a local source: {scheme}:// does not show "
                         "mount points (exclude them by pattern)")
    from vmkeep.guestfiles.remote import open_remote

    return open_remote(source, storage_options or {}, patterns, exclude_caches)


def previous_point(repo: Repository, name: str) -> FilePoint | None:
    return latest_file_point(repo, name)


def commit_file_point(
    repo: Repository,
    name: str,
    result: FileBackupResult,
    *,
    source: str,
    client: str,
    parent: str | None = None,
    meta: dict[str, Any] | None = None,
) -> FilePoint:
    """Publish the restore point (manifest last).  Call after the backup's session committed."""
    point = FilePoint(  # rows in sort_key order: the walkers' contract; readers validate
        name=name,
        time=clock.now(),
        table=result.table,
        source=redact(source),
        client=client,
        parent=parent,
        hostname=socket.gethostname(),
        stats=result.stats.to_json(),
        meta={
            "warnings": [w.to_json() for w in result.warnings[:100]],
            "partial": result.partial,
            **(meta or {}),
        },
    )
    save_file_point(repo, point)
    return point


def summarize(point: FilePoint, result: FileBackupResult) -> dict[str, Any]:
    """The run summary (the CLI's ``--json`` output and the Prefect artifact)."""
    return {
        "id": point.id,
        "short_id": point.short_id,
        "name": point.name,
        "kind": "files",
        "source": point.source,
        "client": point.client,
        "parent": point.parent,
        **result.stats.to_json(),
        "partial": result.partial,
        "warnings": [w.to_json() for w in result.warnings],
    }


def default_workers() -> int:
    """The data path's default reader threads (``file_backup.default_workers``)."""
    return file_backup_workers()
