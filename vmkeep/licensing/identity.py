"""Workload identities: what the licence counts, derived from what is protected, never from a name
the user types.

An identity is an opaque, case-folded string; two backups of the same machine give the same one,
whatever the restore point, chain or ``--client`` name, and whichever repository they go to.

==========================  ==================================================================
workload                    identity
==========================  ==================================================================
VM (image backup)           ``uuid:<instanceUuid>`` (``name:<vm name>`` only when vSphere gives
                            no instanceUuid)
ESX host a VM is read via   ``name:<host name>``
file source, URL            ``name:<URL host>`` (``sftp://u@web1/srv`` → ``name:web1``)
file source, local path     ``name:<server>`` when the path is on a network file system (NFS,
                            SMB/CIFS, sshfs …: the server named in the mount's source), else
                            ``name:<this machine's host name>``
disk image (``backup        ``image:<host>:<path>``: the image file's real path (symbolic links
image``)                    resolved) on the machine that stores it — the NFS/SMB server and
                            its exported path for an image on a network file system, else this
                            machine's host name and the local path
==========================  ==================================================================

File clients and ESX hosts share the ``name:`` space on purpose: an ESX host whose own files are
backed up is recognised as that host (its client is included in its ESX Server Client).

Known limits (docs/licensing.md): one image path reused for different disks counts once; two
hard links to one image count twice.  Both are documented rather than guessed at.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlsplit

#: file-system types whose data lives on another machine (the mount's source names it)
NETWORK_FS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "sshfs", "9p", "ceph", "glusterfs",
     "fuse.glusterfs", "afs", "davfs", "fuse.davfs2", "fuse.rclone"}
)
MOUNTINFO = "/proc/self/mountinfo"


def machine_id(name: str) -> str:
    """A named machine (ESX host, file client, data mover, tape library)."""
    return f"name:{name.strip().lower()}"


def vm_id(name: str, uuid: str | None) -> str:
    """A guest: ``uuid:`` when its instance UUID is known, else ``name:`` (as the planner)."""
    return f"uuid:{uuid.strip().lower()}" if uuid else machine_id(name)


def this_host() -> str:
    return socket.gethostname().lower() or "localhost"


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as ``\\ooo``."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def _mount_of(path: str, mountinfo: str = MOUNTINFO) -> tuple[str, str, str, str] | None:
    """(mount point, root inside the file system, fs type, source) of the mount holding ``path``."""
    try:
        lines = Path(mountinfo).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    best: tuple[str, str, str, str] | None = None
    for line in lines:
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 2:
            continue
        root, point = _unescape(fields[3]), _unescape(fields[4])
        inside = path == point or path.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) >= len(best[0])):
            best = (point, root, tail[0], _unescape(tail[1]))
    return best


def _server_of(source: str) -> str | None:
    """The server in a network mount's source: ``//srv/share``, ``srv:/path``, ``u@srv:/path``."""
    if source.startswith("//"):
        return source[2:].split("/", 1)[0] or None
    if ":" in source:
        host = source.split(":", 1)[0].rsplit("@", 1)[-1].strip("[]")
        return host or None
    return None


def _remote_path(source: str) -> str:
    if source.startswith("//"):
        return "/" + source[2:].split("/", 1)[-1] if "/" in source[2:] else "/"
    return source.split(":", 1)[1] if ":" in source else ""


def storage_location(path: str | os.PathLike[str], mountinfo: str = MOUNTINFO) -> tuple[str, str]:
    """(machine, path on that machine) of a local path: the server and its exported path for a
    network file system, else this host and the real path."""
    real = os.path.realpath(os.fspath(path))
    mount = _mount_of(real, mountinfo)
    if mount is not None:
        point, root, fstype, source = mount
        server = _server_of(source) if fstype in NETWORK_FS else None
        if server:
            rel = os.path.relpath(real, point)
            base = _remote_path(source).rstrip("/") + ("" if root == "/" else root.rstrip("/"))
            return server.lower(), (base + ("" if rel == "." else "/" + rel)) or "/"
    return this_host(), real


def file_source_id(source: str, mountinfo: str = MOUNTINFO) -> str:
    """The machine whose files a file backup reads (see the module table)."""
    if "://" in source and not source.startswith("file://"):
        return machine_id(urlsplit(source).hostname or "unknown")
    host, _ = storage_location(source.removeprefix("file://"), mountinfo)
    return machine_id(host)


def image_id(path: str | os.PathLike[str], mountinfo: str = MOUNTINFO) -> str:
    """The disk image a ``backup image`` reads (see the module table)."""
    host, where = storage_location(path, mountinfo)
    return f"image:{host}:{where}"
