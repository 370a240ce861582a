"""The nbdkit plugin behind ``vmkeep export --nbd``: one disk (or one volume) of a restore point.

This file is loaded by nbdkit's Python plugin (``nbdkit python nbdkit_plugin.py key=value…``),
not imported by vmkeep itself; :mod:`vmkeep.browse.nbd` builds the command line.  nbdkit's
embedded interpreter is the system's Python, so the plugin first puts the site-packages folders
of the interpreter that started it (``sitepath=``, ``:``-separated) at the front of ``sys.path``
and only then imports vmkeep.

Keys: ``repo=`` (URL), ``point=`` (id or reference), ``disk=`` (number) and optionally
``volume=`` (canonical or short volume name: serve that volume's bytes instead of the disk).
The repository password, if any, comes from the environment exactly as for the CLI
(``VMKEEP_PASSWORD`` / ``VMKEEP_PASSWORD_FILE`` / ``VMKEEP_PASSWORD_COMMAND``): never argv.

Contract:

- Read-only.  Writes are refused by the plugin (``can_write`` is false); ``--writable`` exports
  stack nbdkit's ``cow`` filter on top, so writes land in a temporary overlay owned by nbdkit and
  the repository is never written.
- Every read fetches only the chunks it touches (the random-access reader); decoded chunks are
  cached per connection.  Holes and never-written chunks are reported as zero extents, so
  ``nbdcopy`` and ``qemu-img convert`` skip them.
- Whole-disk exports are served in parallel (``pread`` is thread-safe); a volume that is not a
  plain byte range of its disk (LVM) is served serially.
- A chunk that is missing or corrupt fails that read with EIO; the export carries on.
"""

from __future__ import annotations

import errno
import sys
import threading
from typing import Any

import nbdkit  # provided by nbdkit's Python plugin at run time

API_VERSION = 2

_config: dict[str, str] = {}
_state: dict[str, Any] = {}


def thread_model() -> int:
    return int(nbdkit.THREAD_MODEL_PARALLEL)


def config(key: str, value: str) -> None:
    if key not in ("repo", "point", "disk", "volume", "sitepath"):
        raise RuntimeError(f"unknown parameter {key!r}")
    _config[key] = value


def config_complete() -> None:
    for path in reversed([p for p in _config.get("sitepath", "").split(":") if p]):
        if path not in sys.path:
            sys.path.insert(0, path)
    for key in ("repo", "point"):
        if key not in _config:
            raise RuntimeError(f"{key}= is required")


def get_ready() -> None:
    """Open the repository and the point once, before serving (errors end nbdkit at start)."""
    from vmkeep.browse.nbd import open_source

    _state["source"] = open_source(
        _config["repo"], _config["point"], int(_config.get("disk", "0")), _config.get("volume")
    )
    _state["lock"] = threading.Lock()


def open(readonly: bool) -> int:
    return 1


def get_size(h: int) -> int:
    return int(_state["source"].size)


def can_write(h: int) -> bool:
    return False


def can_multi_conn(h: int) -> bool:
    return True


def can_extents(h: int) -> bool:
    return True


def pread(h: int, buf: bytearray, offset: int, flags: int) -> None:
    source = _state["source"]
    try:
        if source.parallel:
            data = source.pread(offset, len(buf))
        else:
            with _state["lock"]:
                data = source.pread(offset, len(buf))
    except Exception as exc:  # a missing or corrupt chunk: this read fails, the export goes on
        nbdkit.set_error(errno.EIO)
        raise RuntimeError(f"read at {offset}: {exc}") from None
    buf[: len(data)] = data
    if len(data) < len(buf):
        buf[len(data) :] = bytes(len(buf) - len(data))


def extents(h: int, count: int, offset: int, flags: int) -> list[tuple[int, int, int]]:
    return list(_state["source"].extents(offset, count))
