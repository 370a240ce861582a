"""Client-side state: what this machine has seen of each repository (rollback detection).

Like borg's security directory.  The repository alone cannot tell "restore point deleted" from
"restore point never existed", so each client remembers the restore points it has seen and the
BLAKE3 of the repository's ``config`` (trust on first use), per repository id, in
``<state dir>/security/<repository id>.json`` where the state dir is ``$VMKEEP_STATE_DIR``, else
``$XDG_STATE_HOME/vmkeep``, else ``~/.local/state/vmkeep``.  Format (JSON, version 1)::

    {"format": "vmkeep-client-state", "version": 1, "repository": "<config id>",
     "location": "<where it was last opened; informational>", "config_blake3": "<64 hex>",
     "points": ["<point id>", ...], "updated": ISO-8601, "listed": ISO-8601}

``listed`` (optional): when this client last listed every recorded point present (refreshed at
most once per :data:`LISTED_REFRESH`).  Tombstones expire (prune deletes them
:data:`vmkeep.storage.forget.TOMBSTONE_TTL` after the forget), so a recorded point that is gone
without a tombstone is taken as forgotten — with a warning — only when this client has not
listed the repository for longer than that plus :data:`LISTED_REFRESH`: any tombstone it could
have needed may have expired.  Every point this client saw within that window is still checked.

How the repository uses it (:meth:`vmkeep.storage.repository.Repository.point_ids`):

* the state is read **before** the repository is listed, so every id in it was recorded before the
  listing began and must be listed, unless ``forget`` left a tombstone ``forgotten/<id>``
  (checked only when an id is missing: no extra round trip in the normal case); a missing id
  without a valid tombstone, or a different config hash, raises
  :class:`~vmkeep.storage.errors.RepositoryRolledBack`;
* after a clean listing, new ids are added and tombstoned ids dropped (so they are not looked
  up again);
* ``vmkeep check --accept-rollback`` replaces the state by what the repository holds now.

Updates are read-merge-write under an exclusive ``flock`` on ``<repository id>.lock`` and
published atomically (temporary file, fsync, rename, directory fsync), so concurrent vmkeep
processes on one machine never lose each other's ids.  A state directory that cannot be written
(read-only home, no home) only costs the detection: vmkeep logs a warning and carries on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

from vmkeep import clock
from vmkeep.settings import settings

log = logging.getLogger(__name__)

STATE_FORMAT = "vmkeep-client-state"
STATE_VERSION = 1
#: ``listed`` is rewritten at most this often (it is a lower bound of the last listing).
LISTED_REFRESH = timedelta(days=1)
_REPO_ID = re.compile(r"^[0-9a-f]{8,64}$")
_warned: set[str] = set()


def state_dir() -> Path | None:
    """The client state directory, or ``None`` when there is no home to put it in."""
    explicit = settings().state_dir
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "vmkeep"
    try:
        return Path.home() / ".local" / "state" / "vmkeep"
    except RuntimeError:  # no HOME and no passwd entry
        return None


@dataclass
class StateRecord:
    """One repository's client-side record."""

    repository: str
    config_blake3: str
    points: set[str] = field(default_factory=set)
    location: str = ""
    listed: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "version": STATE_VERSION,
            "repository": self.repository,
            "location": self.location,
            "config_blake3": self.config_blake3,
            "points": sorted(self.points),
            "updated": clock.now().isoformat(),
            **({"listed": self.listed.isoformat()} if self.listed else {}),
        }

    @classmethod
    def from_json(cls, obj: Any, repo_id: str) -> StateRecord:
        if not isinstance(obj, dict) or obj.get("format") != STATE_FORMAT:
            raise ValueError("not a vmkeep client state file")
        if obj.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported client state version {obj.get('version')}")
        if obj.get("repository") != repo_id:
            raise ValueError("state file of another repository")
        points = obj.get("points")
        config_hash = obj.get("config_blake3")
        if not isinstance(points, list) or not all(isinstance(p, str) for p in points):
            raise ValueError("bad points")
        if not isinstance(config_hash, str):
            raise ValueError("bad config_blake3")
        listed = None
        if isinstance(obj.get("listed"), str):
            try:
                listed = datetime.fromisoformat(obj["listed"])
            except ValueError:
                listed = None
            if listed is not None and listed.tzinfo is None:
                listed = None
        return cls(repo_id, config_hash, set(points), str(obj.get("location") or ""), listed)


class KnownState:
    """The state file of one repository.  No I/O until used."""

    def __init__(self, repo_id: str, location: str = "", directory: Path | None = None) -> None:
        self.repo_id = repo_id
        self.location = location
        base = directory if directory is not None else state_dir()
        #: ``None``: no usable state directory (detection off, warned once).
        self.path: Path | None = None
        if base is None:
            self._warn("no home directory for the client state (set VMKEEP_STATE_DIR)")
        elif not _REPO_ID.match(repo_id):
            self._warn(f"implausible repository id {repo_id[:80]!r}")
        else:
            self.path = base / "security" / f"{repo_id}.json"

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def load(self) -> StateRecord | None:
        """The recorded state, or ``None`` (first use, or detection off).  Lock-free: the file
        is only ever replaced by rename."""
        if self.path is None:
            return None
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._warn(f"cannot read {self.path}: {exc.strerror}")
            return None
        try:
            return StateRecord.from_json(json.loads(data), self.repo_id)
        except ValueError as exc:
            self._warn(f"ignoring unreadable client state {self.path}: {exc}")
            return None

    def update(
        self,
        config_blake3: str,
        *,
        add: Iterable[str] = (),
        remove: Iterable[str] = (),
        replace: bool = False,
        listed: datetime | None = None,
    ) -> None:
        """Merge into the state under the file lock: ``(current ∪ add) − remove``.  A new file
        records ``config_blake3``; an existing one keeps its hash unless ``replace`` (which also
        drops every recorded point first: the re-baseline of ``--accept-rollback``)."""
        if self.path is None:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with self._locked():
                loaded = None if replace else self.load()
                current = loaded or StateRecord(self.repo_id, config_blake3)
                before = (set(current.points), current.location, current.listed)
                current.points |= set(add)
                current.points -= set(remove)
                current.location = self.location or current.location
                if listed is not None and (current.listed is None or listed > current.listed):
                    current.listed = listed
                if loaded is None or (current.points, current.location, current.listed) != before:
                    self._write(current)
        except OSError as exc:
            self._warn(f"cannot write {self.path}: {exc.strerror or exc}")

    # -- internals -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        assert self.path is not None
        lock_path = self.path.with_suffix(".lock")
        with open(lock_path, "a+b") as f:
            _flock(f)
            yield  # released when the file closes

    def _write(self, record: StateRecord) -> None:
        assert self.path is not None
        body = json.dumps(record.to_json(), indent=1).encode()
        tmp = self.path.with_name(f".{self.path.name}.tmp-{secrets.token_hex(6)}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(body)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def _warn(self, message: str) -> None:
        if message not in _warned:
            _warned.add(message)
            log.warning("%s; rollback detection is off for this repository", message)


def _flock(f: IO[bytes]) -> None:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: best effort without the lock
        return
    fcntl.flock(f.fileno(), fcntl.LOCK_EX)
