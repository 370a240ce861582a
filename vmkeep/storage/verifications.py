"""Verification records: what a file-system, boot or YARA verification found, kept beside the
point.

Format ``vmkeep-verification`` version 1, one immutable JSON object per verification at
``verifications/<point id>/<UTC time %Y%m%dT%H%M%SZ>-<kind>-<4 random hex>.json`` (sealed like
every other object in an encrypted repository)::

    {"format": "vmkeep-verification", "version": 1,
     "point": "<64 hex>", "kind": "fs" | "boot" | "yara",
     "time": "2026-12-02T07:30:00Z", "ok": true | false,
     "host": "<node name of the verifier>",
     "result": {...}}            # kind-specific, as `vmkeep verify … --json` prints it

Kind ``yara`` (a malware scan, ``vmkeep verify yara``) was added in 2026-12 without a version
change: older readers skip records whose kind they do not know.  A boot verification may add its
screenshot as a sibling object with the same name ending in
``.png`` (``screenshot_key`` of the record; sealed in an encrypted repository).

Records never change once written (one atomic put) and are derived data: losing one loses only
the history of a check, never backup data.  ``prune`` deletes the records of points that no
longer exist.  Readers skip (and report) records that do not parse; a record whose ``point``
differs from its folder is ignored, so a planted record cannot claim another point was verified.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import re
from dataclasses import dataclass
from typing import Any

from vmkeep import clock
from vmkeep.storage.errors import StorageError
from vmkeep.storage.repository import Repository

log = logging.getLogger(__name__)

PREFIX = "verifications/"
FORMAT, VERSION = "vmkeep-verification", 1
KINDS = ("fs", "boot", "yara")
_NAME = re.compile(r"(\d{8}T\d{6}Z)-(fs|boot|yara)-[0-9a-f]{4}\.json")
_POINT = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Verification:
    point: str
    kind: str
    time: str
    ok: bool
    host: str
    result: dict[str, Any]
    key: str

    def to_json(self) -> dict[str, Any]:
        return {
            "point": self.point,
            "kind": self.kind,
            "time": self.time,
            "ok": self.ok,
            "host": self.host,
            "result": self.result,
        }


def record(
    repo: Repository,
    point_id: str,
    kind: str,
    ok: bool,
    result: dict[str, Any],
    screenshot: bytes | None = None,
) -> str:
    """Store one verification of ``point_id`` (and its PNG screenshot first); returns its key."""
    if kind not in KINDS or not _POINT.fullmatch(point_id):
        raise ValueError(f"bad verification record {kind!r} for {point_id!r}")
    now = clock.now()
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    key = f"{PREFIX}{point_id}/{stamp}-{kind}-{os.urandom(2).hex()}.json"
    body = {
        "format": FORMAT,
        "version": VERSION,
        "point": point_id,
        "kind": kind,
        "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ok": bool(ok),
        "host": platform.node(),
        "result": result,
    }
    if screenshot is not None:
        repo.backend.put(screenshot_key(key), screenshot)
    repo.backend.put(key, json.dumps(body, sort_keys=True).encode())
    return key


def screenshot_key(record_key: str) -> str:
    return record_key.removesuffix(".json") + ".png"


def screenshot(repo: Repository, record_key: str) -> bytes | None:
    """The screenshot stored with a record, or None."""
    try:
        return repo.backend.get(screenshot_key(record_key))
    except StorageError:
        return None


def for_point(repo: Repository, point_id: str) -> tuple[list[Verification], list[str]]:
    """Every readable record of ``point_id``, oldest first, and warnings for the others."""
    keys = sorted(k for k, _ in repo.backend.list(f"{PREFIX}{point_id}/"))
    return _read(repo, point_id, keys)


def unreadable(repo: Repository, point_ids: set[str]) -> list[str]:
    """One warning per record of a point in ``point_ids`` that cannot be read (one listing of
    every record, one get each: ``vmkeep check``)."""
    by_point: dict[str, list[str]] = {}
    for key, _ in repo.backend.list(PREFIX):
        parts = key.split("/")
        if len(parts) == 3 and parts[1] in point_ids:
            by_point.setdefault(parts[1], []).append(key)
    return [w for point_id, keys in sorted(by_point.items())
            for w in _read(repo, point_id, sorted(keys))[1]]


def _read(
    repo: Repository, point_id: str, keys: list[str]
) -> tuple[list[Verification], list[str]]:
    out: list[Verification] = []
    warnings: list[str] = []
    for key in keys:
        if not _NAME.fullmatch(key.rsplit("/", 1)[-1]):
            continue
        try:
            body = json.loads(repo.backend.get(key))
            ok = body["format"] == FORMAT and body["version"] == VERSION
            if not ok or body["point"] != point_id or body["kind"] not in KINDS:
                raise ValueError("not a verification record of this point")
            out.append(
                Verification(
                    point_id,
                    str(body["kind"]),
                    str(body["time"]),
                    body["ok"] is True,
                    str(body.get("host", "")),
                    dict(body.get("result") or {}),
                    key,
                )
            )
        except (StorageError, ValueError, KeyError, TypeError) as exc:
            warnings.append(f"{key}: unreadable verification record ({exc})")
    return out, warnings


def latest(repo: Repository, point_id: str) -> dict[str, Verification]:
    """The newest readable record of each kind for ``point_id``; each record that cannot be
    read is logged as a warning (the point then shows as not verified by it, never passed)."""
    records, warnings = for_point(repo, point_id)
    for warning in warnings:
        log.warning("%s: left out", warning)
    return {r.kind: r for r in records}


def orphans(repo: Repository, points: set[str]) -> list[str]:
    """Keys of records whose point is not in ``points`` (for prune)."""
    return sorted(
        key
        for key, _ in repo.backend.list(PREFIX)
        if key.count("/") == 2 and key.split("/")[1] not in points
    )
