"""Datastore paths: ``"[ds1] vm/disk.vmdk"`` (pure functions, no I/O)."""

from __future__ import annotations

import re

from vmkeep.vsphere.errors import VSphereError

_DS_PATH = re.compile(r"^\[(?P<ds>[^\]]+)\]\s*(?P<path>.*)$")


def split_datastore_path(file_name: str) -> tuple[str, str]:
    """``"[ds1] vm/disk.vmdk"`` → ``("ds1", "vm/disk.vmdk")``."""
    m = _DS_PATH.match(file_name.strip())
    if not m:
        raise VSphereError(f"not a datastore path: {file_name!r}")
    return m.group("ds"), m.group("path").lstrip("/")


def join_datastore_path(datastore: str, path: str) -> str:
    return f"[{datastore}] {path}"
