"""A named tape library: its devices (configured once), its cartridges' state, drive locks.

Configuration lives in ``$VMKEEP_TAPE_DIR`` (default ``<vmkeep config dir>/tape``)::

    libraries/<name>.json   {"name", "changer": URL, "drives": [URL, …]}
    media/<name>.json       per barcode: pool, sequence, files written, full, repository id,
                            labelled_at, last_written, expires (retention)
    pools.json              {pool: {"retention_days": n, "append": bool}}
    locks/                  flock files: one per drive and per cartridge in use

Library and pool names (:func:`check_name`) are one path component and a label field: 1–64
characters, no ``/``, ``\\``, control character or leading ``.``.  A definition or state file
that cannot be read is a typed error naming it, never an empty configuration: the cartridge
state holds each cartridge's retention, and an empty one would let a job overwrite cartridges
that are still to be kept.

Device URLs are ``iscsi://host:port/iqn/lun`` or ``sg:///dev/sgN``.  Drive *i* of the config is
data-transfer element *i* of the changer (in address order) unless both report serial numbers,
which then decide.

Sharing: a job takes a drive with :meth:`Library.drive_lock` (non-blocking flock; two jobs get
the two drives, a third gets :class:`NoDrive`) and holds a cartridge's lock for as long as it
uses it; :meth:`Library.move` refuses to move a cartridge another job holds.  Every changer
operation (locate + move, import, export) runs in one *changer turn*: a host-wide blocking flock,
plus the ``changer_guard`` the caller gives — the flows pass a Prefect global concurrency limit
``vmkeep-tape-changer-<library>`` of one slot, so data movers on other machines that share the
library never interleave a READ ELEMENT STATUS and a MOVE MEDIUM.  The drive and cartridge locks
are per host (flock); across data movers the flows take a Prefect global concurrency limit per
library (one slot per drive) on top.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vmkeep import clock
from vmkeep.errors import UsageError
from vmkeep.scsi import smc
from vmkeep.scsi.smc import Changer, Element
from vmkeep.scsi.ssc import TapeDrive
from vmkeep.scsi.transport import open_transport
from vmkeep.settings import config_dir, settings
from vmkeep.tape.errors import (
    CartridgeInUse,
    LibraryNotConfigured,
    NoDrive,
    TapeConfigUnreadable,
    TapeJobError,
)

ENV_DIR = "VMKEEP_TAPE_DIR"


def tape_dir() -> Path:
    """``VMKEEP_TAPE_DIR``, else ``tape/`` in the configuration directory
    (:func:`vmkeep.settings.config_dir`: ``VMKEEP_CONFIG_DIR`` is honoured, as the settings
    table says)."""
    if found := settings().tape_dir:
        return found.expanduser()
    return config_dir() / "tape"


#: The longest library or pool name (a file name and a field of every cartridge label).
MAX_NAME = 64


def check_name(kind: str, name: str) -> str:
    """``name`` if it may name a tape ``kind`` (``library``, ``pool``), else a
    :class:`~vmkeep.errors.UsageError`: a library's name is a file name in the tape folder
    (``../x`` wrote outside it), a pool's is written on cartridge labels."""
    if not name.strip():
        why = "is empty"
    elif len(name) > MAX_NAME:
        why = f"is longer than {MAX_NAME} characters"
    elif any(c in name for c in "/\\") or any(ord(c) < 32 or ord(c) == 127 for c in name):
        why = "holds a '/', '\\' or a control character"
    elif name.startswith("."):
        why = "begins with '.'"
    else:
        return name
    raise UsageError(f"tape {kind} name {name!r} {why}")


def _read_json(path: Path, what: str, fix: str) -> Any:
    """The JSON object in ``path`` (``None`` when there is none); one that cannot be read is a
    :class:`TapeConfigUnreadable` naming ``what`` and how to ``fix`` it."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise TapeConfigUnreadable(what, path, exc, fix) from None
    if not isinstance(obj, dict):
        raise TapeConfigUnreadable(what, path, "not a JSON object", fix)
    return obj


def _atomic_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


@dataclass
class LibraryConfig:
    name: str
    changer: str
    drives: list[str]

    @classmethod
    def load(cls, name: str) -> LibraryConfig:
        """The definition saved by ``tape library add``: :class:`LibraryNotConfigured` (exit 2)
        when there is none, :class:`TapeConfigUnreadable` (exit 14, as damaged pools or
        cartridge state) when it cannot be read — left in place for the administrator."""
        path = tape_dir() / "libraries" / f"{check_name('library', name)}.json"
        what = f"the definition of library {name!r}"
        fix = "add it again with `vmkeep tape library add`"
        obj = _read_json(path, what, fix)
        if obj is None:
            raise LibraryNotConfigured(name)
        try:
            drives = obj["drives"]
            if not isinstance(drives, list) or not drives:
                raise ValueError("no list of drives")
            return cls(str(obj["name"]), str(obj["changer"]), [str(d) for d in drives])
        except (KeyError, TypeError, ValueError) as exc:
            raise TapeConfigUnreadable(what, path, exc, fix) from None

    def save(self) -> None:
        _atomic_json(tape_dir() / "libraries" / f"{check_name('library', self.name)}.json",
                     {"name": self.name, "changer": self.changer, "drives": self.drives})


@dataclass
class Pool:
    name: str
    retention_days: int = 7
    append: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"retention_days": self.retention_days, "append": self.append}


def load_pools() -> dict[str, Pool]:
    path = tape_dir() / "pools.json"
    fix = "define the pools again with `vmkeep tape pool add` after moving it aside"
    obj = _read_json(path, "the media pools", fix) or {}
    try:
        pools = {n: Pool(n, int(v.get("retention_days", 7)), bool(v.get("append", True)))
                 for n, v in obj.items()}
    except (AttributeError, TypeError, ValueError) as exc:
        raise TapeConfigUnreadable("the media pools", path, exc, fix) from None
    for pool in pools.values():
        if not 0 <= pool.retention_days <= MAX_RETENTION_DAYS:
            raise TapeConfigUnreadable("the media pools", path,
                                       f"pool {pool.name!r}: retention {pool.retention_days} "
                                       f"days", fix)
    return pools


#: the longest retention a pool may have (100 years, as object lock's): a cartridge's expiry
#: date must be a date
MAX_RETENTION_DAYS = 36500


def save_pool(pool: Pool) -> None:
    """Define or redefine ``pool`` (its name checked, its retention 0 to
    :data:`MAX_RETENTION_DAYS` days)."""
    check_name("pool", pool.name)
    if pool.retention_days < 0:
        raise UsageError(f"tape pool {pool.name!r}: the retention cannot be negative "
                         f"({pool.retention_days} days)")
    if pool.retention_days > MAX_RETENTION_DAYS:
        raise UsageError(f"tape pool {pool.name!r}: a retention of {pool.retention_days} days "
                         f"is beyond any date; at most {MAX_RETENTION_DAYS} (100 years)")
    pools = load_pools()
    pools[pool.name] = pool
    _atomic_json(tape_dir() / "pools.json", {n: p.to_json() for n, p in pools.items()})


def get_pool(name: str) -> Pool:
    """A configured pool, or the defaults (7 days, append) for an unconfigured name."""
    return load_pools().get(check_name("pool", name), Pool(name))


@dataclass
class Media:
    barcode: str
    pool: str | None = None
    sequence: int = 0
    files: int = 0
    full: bool = False
    repository_id: str | None = None
    labelled_at: str | None = None
    last_written: str | None = None
    expires: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "barcode": self.barcode, "pool": self.pool, "sequence": self.sequence,
            "files": self.files, "full": self.full, "repository_id": self.repository_id,
            "labelled_at": self.labelled_at, "last_written": self.last_written,
            "expires": self.expires,
        }

    def expired(self) -> bool:
        """Reusable: every point written to it is past its pool's retention."""
        if self.expires is None:
            return self.files == 0
        return clock.now().isoformat() >= self.expires


class Library:
    """An opened library (changer session opened lazily)."""

    def __init__(
        self,
        cfg: LibraryConfig,
        changer_guard: Callable[[], AbstractContextManager[object]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.changer_guard = changer_guard
        self._changer: Changer | None = None
        self._held: dict[str, int] = {}
        self._drive_map: dict[int, int] = {}
        self._in_turn = False

    @classmethod
    def open(
        cls, name: str, changer_guard: Callable[[], AbstractContextManager[object]] | None = None
    ) -> Library:
        """Open library ``name``; ``changer_guard`` (optional) is entered around every changer
        turn (see the module docstring)."""
        return cls(LibraryConfig.load(name), changer_guard)

    # -- devices -------------------------------------------------------------------------------
    @property
    def changer(self) -> Changer:
        if self._changer is None:
            self._changer = Changer(open_transport(self.cfg.changer))
        return self._changer

    def open_drive(self, index: int) -> TapeDrive:
        if not 0 <= index < len(self.cfg.drives):
            raise TapeJobError(f"library {self.name} has no drive {index}")
        return TapeDrive(open_transport(self.cfg.drives[index]), f"{self.name}:drive{index}")

    def close(self) -> None:
        if self._changer is not None:
            self._changer.close()
            self._changer = None

    def __enter__(self) -> Library:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- inventory -----------------------------------------------------------------------------
    def elements(self) -> dict[int, list[Element]]:
        return self.changer.inventory()

    def slot_count(self) -> int:
        """Storage slots, as the licence counts them (Autoloader Support, per slot)."""
        return len(self.changer.elements(smc.SLOT))

    def drive_elements(self) -> list[Element]:
        return sorted(self.changer.elements(smc.DRIVE, dvcid=True), key=lambda e: e.address)

    def drive_address(self, index: int) -> int:
        """The changer element of configured drive ``index``: the element whose device
        identifier ends with the drive's serial number (INQUIRY page 80h) when exactly one
        does, else the index-th drive element in address order (tgt truncates the last
        element's identifier, and some changers report none)."""
        if index in self._drive_map:
            return self._drive_map[index]
        drives = self.drive_elements()
        if index >= len(drives):
            raise TapeJobError(f"changer reports {len(drives)} drive(s), no drive {index}")
        addr = drives[index].address
        d = self.open_drive(index)
        try:
            serial = d.inquiry_serial()
        finally:
            d.close()
        if serial:
            hits = [e.address for e in drives if e.identifier and e.identifier.endswith(serial)]
            if len(hits) == 1:
                addr = hits[0]
        self._drive_map[index] = addr
        return addr

    def locate(self, barcode: str) -> Element:
        for es in self.elements().values():
            for e in es:
                if e.full and e.barcode == barcode:
                    return e
        raise TapeJobError(f"cartridge {barcode} is not in library {self.name}")

    # -- media state ---------------------------------------------------------------------------
    def _media_path(self) -> Path:
        return tape_dir() / "media" / f"{self.name}.json"

    @contextmanager
    def _media_locked(self) -> Iterator[dict[str, Media]]:
        path = self._media_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".lock"), "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            try:
                media = self._read_media(path)
                yield media
                _atomic_json(path, {b: m.to_json() for b, m in media.items()})
            finally:
                fcntl.flock(lk, fcntl.LOCK_UN)

    def media(self) -> dict[str, Media]:
        return self._read_media(self._media_path())

    def _read_media(self, path: Path) -> dict[str, Media]:
        """The cartridge state; unreadable: :class:`TapeConfigUnreadable` (see the module
        docstring: never taken for an empty one)."""
        what = f"the cartridge state of library {self.name!r}"
        fix = ("restore it from a copy; moved aside, every cartridge counts as new and its "
               "retention is forgotten")
        raw = _read_json(path, what, fix) or {}
        try:
            return {b: Media(**v) for b, v in raw.items()}
        except TypeError as exc:
            raise TapeConfigUnreadable(what, path, exc, fix) from None

    def update_media(self, barcode: str, **changes: Any) -> Media:
        with self._media_locked() as media:
            m = media.setdefault(barcode, Media(barcode))
            for k, v in changes.items():
                setattr(m, k, v)
            return m

    def next_sequence(self, pool: str) -> int:
        return 1 + max((m.sequence for m in self.media().values() if m.pool == pool), default=0)

    # -- locks ---------------------------------------------------------------------------------
    def _lock_path(self, what: str) -> Path:
        d = tape_dir() / "locks"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{self.name}-{what}.lock"

    @contextmanager
    def drive_lock(self, index: int | None = None) -> Iterator[int]:
        """Take drive ``index`` (or the first free one) for the duration of the block."""
        candidates = range(len(self.cfg.drives)) if index is None else [index]
        for i in candidates:
            f = open(self._lock_path(f"drive{i}"), "a")  # noqa: SIM115 - held for the block
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            try:
                yield i
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
                f.close()
            return
        raise NoDrive(self.name)

    @contextmanager
    def cartridge_lock(self, barcode: str) -> Iterator[None]:
        f = open(self._lock_path(f"cart-{barcode}"), "a")  # noqa: SIM115
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise CartridgeInUse(barcode) from None
        self._held[barcode] = self._held.get(barcode, 0) + 1
        try:
            yield
        finally:
            self._held[barcode] -= 1
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()

    def in_use(self, barcode: str) -> bool:
        """Held by another job (this process's own holds don't count)."""
        if self._held.get(barcode):
            return False
        with open(self._lock_path(f"cart-{barcode}"), "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
        return False

    # -- movement ------------------------------------------------------------------------------
    @contextmanager
    def changer_turn(self) -> Iterator[None]:
        """Hold the changer for the block: a host-wide flock, then the caller's guard.
        Re-entrant within this object (an unload's move is part of the unload's turn)."""
        if self._in_turn:
            yield
            return
        with open(self._lock_path("changer"), "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                with self.changer_guard() if self.changer_guard else nullcontext():
                    self._in_turn = True
                    try:
                        yield
                    finally:
                        self._in_turn = False
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def move(self, barcode: str, dest: int) -> None:
        """Move a cartridge (never one another job holds); locate and move are one turn."""
        if self.in_use(barcode):
            raise CartridgeInUse(barcode)
        with self.changer_turn():
            src = self.locate(barcode)
            if src.address != dest:
                self.changer.move(src.address, dest)

    def load(self, barcode: str, drive: int) -> None:
        self.move(barcode, self.drive_address(drive))

    def unload(self, drive: int, to: int | None = None) -> str | None:
        """Unload drive ``drive`` and put its cartridge back where it came from (or ``to``).
        A cartridge another job holds is neither unloaded nor moved (:class:`CartridgeInUse`,
        raised before the drive is told anything: an UNLOAD mid-write would rewind and eject
        the tape under the job)."""
        addr = self.drive_address(drive)
        el = next(e for e in self.drive_elements() if e.address == addr)
        if not el.full:
            return None
        if el.barcode is not None and self.in_use(el.barcode):
            raise CartridgeInUse(el.barcode)
        d = self.open_drive(drive)
        try:
            d.unload()
        finally:
            d.close()
        dest = to if to is not None else el.source
        if dest is None:
            dest = self.free_slot()
        assert el.barcode is not None
        self.move(el.barcode, dest)
        return el.barcode

    def free_slot(self) -> int:
        for e in self.changer.elements(smc.SLOT):
            if not e.full:
                return e.address
        raise TapeJobError(f"library {self.name} has no free slot")

    def import_cartridge(self) -> str:
        """Move the cartridge in the mail slot to a free storage slot."""
        with self.changer_turn():
            for e in self.changer.elements(smc.MAIL):
                if e.full:
                    dest = self.free_slot()
                    self.changer.move(e.address, dest)
                    return e.barcode or f"slot {dest}"
        raise TapeJobError("the mail slot is empty")

    def export_cartridge(self, barcode: str) -> int:
        """Move a cartridge to a free mail slot (for taking it offline)."""
        with self.changer_turn():
            for e in self.changer.elements(smc.MAIL):
                if not e.full:
                    self.move(barcode, e.address)
                    return e.address
        raise TapeJobError("no free mail slot")

    def inventory(self) -> dict[str, Any]:
        media = self.media()
        els = self.elements()
        rows = []
        for etype in (smc.DRIVE, smc.SLOT, smc.MAIL):
            for e in sorted(els.get(etype, []), key=lambda x: x.address):
                row = e.to_json()
                if e.barcode and e.barcode in media:
                    row["media"] = media[e.barcode].to_json()
                rows.append(row)
        return {
            "library": self.name,
            "slots": len(els.get(smc.SLOT, [])),
            "drives": len(els.get(smc.DRIVE, [])),
            "mail_slots": len(els.get(smc.MAIL, [])),
            "elements": rows,
        }
