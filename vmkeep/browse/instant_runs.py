"""Instant-restore run records: where a later ``finalize``/``cancel``/``list`` finds a run.

A run lives on the data mover that serves its export, in the client state directory
(:func:`vmkeep.storage.known_state.state_dir`: ``$VMKEEP_STATE_DIR``, ``$XDG_STATE_HOME/vmkeep``
or ``~/.local/state/vmkeep``) under ``instant/<run id>/``: the export's working files
(:mod:`vmkeep.browse.instant_export`) and ``run.json``.

``run.json`` (format ``vmkeep.instant-run``, version 1; written atomically)::

    {"format": "vmkeep.instant-run", "version": 1, "id": "ir-…", "state": S,
     "point": full point id, "repo": repository URL (no secrets), "vcenter": URL,
     "vm": VM name, "vm_moref": "vm-…" | null, "host": host name,
     "datastore": NAS datastore name, "datastore_moref": … | null,
     "nfs": {"host", "port", "pseudo"}, "supervisor_pid": int | null,
     "created": unix time, "powered_on_s": seconds from start to powered on | null,
     "phases": {"export_s", "mount_s", "registered_s"} (seconds from start, cumulative),
     "finalized_to": production datastore | null, "error": text | null}

States: ``starting`` → ``running`` → ``finalized`` | ``cancelled``; ``failed`` when start failed
(what it created was removed).  No credentials are ever written here.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any

from vmkeep.browse.errors import BrowseError
from vmkeep.storage.known_state import state_dir

FORMAT, VERSION = "vmkeep.instant-run", 1
STATES = ("starting", "running", "finalized", "cancelled", "failed")


class RunNotFound(BrowseError):
    """No instant-restore run {} on this machine (see `vmkeep instant-restore list`)"""

    exit_code = 14


class RunState(BrowseError):
    """Instant-restore run {} is {}: {}"""

    exit_code = 14


def runs_dir() -> Path:
    base = state_dir()
    if base is None:
        raise BrowseError("no state directory for instant-restore runs: set VMKEEP_STATE_DIR")
    return base / "instant"


def new_id() -> str:
    return "ir-" + secrets.token_hex(4)


def run_path(run_id: str) -> Path:
    if not run_id.startswith("ir-") or "/" in run_id or run_id in ("ir-.", "ir-.."):
        raise RunNotFound(run_id)
    return runs_dir() / run_id


def save(record: dict[str, Any]) -> None:
    folder = run_path(record["id"])
    folder.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "version": VERSION, **record}
    tmp = folder / "run.json.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / "run.json")


def load(run_id: str) -> dict[str, Any]:
    """The record of ``run_id`` (a unique prefix is enough)."""
    matches = [r for r in all_runs() if r["id"] == run_id]
    if not matches:
        matches = [r for r in all_runs() if r["id"].startswith(run_id)]
    if len(matches) != 1:
        raise RunNotFound(run_id)
    return matches[0]


def all_runs() -> list[dict[str, Any]]:
    """Every readable run record, oldest first."""
    out = []
    base = runs_dir()
    if not base.is_dir():
        return []
    for p in base.glob("ir-*/run.json"):
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if doc.get("format") == FORMAT and int(doc.get("version", 0)) <= VERSION:
            out.append(doc)
    return sorted(out, key=lambda r: r.get("created", 0))


def update(record: dict[str, Any], **changes: Any) -> dict[str, Any]:
    record.update(changes, updated=time.time())
    save(record)
    return record
