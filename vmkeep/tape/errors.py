"""Errors of tape jobs (:mod:`vmkeep.tape`)."""

from __future__ import annotations

from vmkeep.errors import VmkeepError


class TapeJobError(VmkeepError):
    """Tape: {}"""

    exit_code = 15


class TapeConfigUnreadable(TapeJobError):
    """Tape: {} in {} cannot be read ({}): {}"""

    exit_code = 14


class LibraryNotConfigured(TapeJobError):
    """Tape library {!r} is not configured (vmkeep tape library add NAME --url …)"""

    exit_code = 2


class NoCartridge(TapeJobError):
    """Tape: no usable cartridge in pool {!r}: {}"""


class NoDrive(TapeJobError):
    """Tape: no free drive in library {!r} (all in use by other jobs)"""

    is_transient = True


class CartridgeInUse(TapeJobError):
    """Tape: cartridge {} is in use by another job"""

    is_transient = True


class HostileTape(TapeJobError):
    """Tape content refused: {}"""

    exit_code = 13


class NotOnTape(TapeJobError):
    """Restore point {} is not in the tape catalog{}"""

    exit_code = 10


class WrongRepository(TapeJobError):
    """Tape holds repository {} but the target repository is {}"""

    exit_code = 14


class NoCatalogRepository(TapeJobError):
    """Tape: no repository at {} to read the tape catalog from (after `vmkeep tape scan --to-repo DIR` the catalog is in DIR: pass --repo DIR)

    The catalog is read from ``--repo`` / ``VMKEEP_REPO``, which after a disaster often still
    names the lost repository."""  # noqa: E501 — the first line is the message

    exit_code = 10


class CartridgeRelabelled(TapeJobError):
    """Tape: cartridge {} was relabelled at {}, after file(s) {} were written: what they held was overwritten, the catalog records are stale"""  # noqa: E501 — the first line is the message

    exit_code = 10
