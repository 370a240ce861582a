"""The installation's licence usage ledger: every workload this installation was allowed to back
up, whichever repository the backup went to.

Why a ledger beside the repositories' catalogs: the catalog of the repository written to knows
only that repository, so a second repository (or forgetting restore points) would start the count
from zero.  The ledger is per installation, like the licence itself; the licence check unites it
with the target repository's catalog (which also carries what *other* data movers protected).

Where: ``<state dir>/licence/usage.json``, the state dir being ``$VMKEEP_STATE_DIR``, else
``$XDG_STATE_HOME/vmkeep``, else ``~/.local/state/vmkeep`` (as the rollback state,
:mod:`vmkeep.storage.known_state`).  Format (JSON, version 1)::

    {"format": "vmkeep-licence-usage", "version": 1,
     "items": [<ProtectedItem.as_dict()>, ...]}     # one per (kind, workload identity)

``time`` of an item is its last allowed backup; items older than :data:`KEEP` are dropped on
write.  Check-and-record is one critical section under an exclusive ``flock`` on
``licence/usage.lock``, so parallel backups (``backup vm 'small*' --parallel 4``, several
processes) cannot each take the last free seat.  A ledger that cannot be read or written refuses
backups (:class:`LedgerError`, exit 17): skipping it would let usage go uncounted.  Writes are
atomic (temporary file, fsync, rename).

It is bookkeeping, not a secret: the machine's administrator can delete it (then the catalog of
the repository written to still counts); docs/licensing.md says what that means.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from vmkeep.licensing.errors import LicenceError
from vmkeep.licensing.usage import ProtectedItem
from vmkeep.storage.known_state import state_dir

FORMAT = "vmkeep-licence-usage"
VERSION = 1
KEEP = timedelta(days=400)
T = TypeVar("T")


class LedgerError(LicenceError):
    """Cannot use the licence usage ledger {}: {}"""


def ledger_path(directory: Path | None = None) -> Path:
    base = directory if directory is not None else state_dir()
    if base is None:
        raise LedgerError("(no state directory)", "set VMKEEP_STATE_DIR or HOME")
    return base / "licence" / "usage.json"


def _key(item: ProtectedItem) -> tuple[str, str]:
    return item.kind, item.identity


class Ledger:
    """The ledger at ``path`` (default: :func:`ledger_path`)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path if path is not None else ledger_path()

    def read(self) -> list[ProtectedItem]:
        """The recorded items ([] when there is no ledger yet)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise LedgerError(str(self.path), exc.strerror or str(exc)) from None
        try:
            doc = json.loads(raw)
            if doc.get("format") != FORMAT or doc.get("version") != VERSION:
                raise ValueError("not a version-1 vmkeep licence usage ledger")
            return [ProtectedItem.from_dict(d) for d in doc["items"]]
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LedgerError(str(self.path), f"damaged ({exc}); move it aside to start anew"
                              " (the repositories' catalogs still count)") from None

    def transact(self, decide: Callable[[list[ProtectedItem]], tuple[T, Iterable[ProtectedItem]]]
                 ) -> T:
        """Under the ledger's lock: ``decide(items)`` returns (result, items to record)."""
        with self._locked():
            items = self.read()
            result, record = decide(items)
            record = list(record)
            if record:
                self._write(_merge(items, record))
            return result

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise LedgerError(str(self.path), exc.strerror or str(exc)) from None
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write(self, items: list[ProtectedItem]) -> None:
        doc = {"format": FORMAT, "version": VERSION, "items": [i.as_dict() for i in items]}
        data = json.dumps(doc, indent=1, sort_keys=True).encode("utf-8")
        try:
            fd, tmp = tempfile.mkstemp(prefix=".usage-", suffix=".tmp", dir=self.path.parent)
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as exc:
            raise LedgerError(str(self.path), exc.strerror or str(exc)) from None


def _merge(items: list[ProtectedItem], new: list[ProtectedItem]) -> list[ProtectedItem]:
    """``items`` with ``new`` recorded (newest time per identity), old ones dropped."""
    by_key: dict[tuple[str, str], ProtectedItem] = {_key(i): i for i in items}
    for item in new:
        old = by_key.get(_key(item))
        if old is None or old.time <= item.time:
            by_key[_key(item)] = item
    newest = max(i.time for i in by_key.values())
    return sorted(
        (i for i in by_key.values() if newest - i.time <= KEEP), key=lambda i: (i.kind, i.identity)
    )
