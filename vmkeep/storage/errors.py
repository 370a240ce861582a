"""Typed errors of the storage layer.

Callers must be able to tell a missing object from a corrupt one and a full target from an
unreachable one, so each case has its own class (see :mod:`vmkeep.errors` for the conventions).
"""

from __future__ import annotations

from vmkeep.errors import VmkeepError


class StorageError(VmkeepError):
    """Storage error: {}"""

    exit_code = 15


class ObjectNotFound(StorageError):
    """Object not found in the repository: {}"""

    exit_code = 13


class TargetFull(StorageError):
    """The backup target is full while writing {}: {}"""

    exit_code = 15


class TargetUnreachable(StorageError):
    """The backup target is unreachable ({}): {}"""

    exit_code = 15
    is_transient = True


class TargetPermissionDenied(StorageError):
    """Permission denied on the backup target: {}"""

    exit_code = 15


class RepositoryNotFound(StorageError):
    """No vmkeep repository at {} (create one with `vmkeep init`)."""

    exit_code = 10


class RepositoryExists(StorageError):
    """A repository already exists at {}."""

    exit_code = 10


class LocationNotEmpty(StorageError):
    """{} is not empty and holds no vmkeep repository ({}): choose a new or empty folder."""

    exit_code = 10


class FormatError(StorageError):
    """Unsupported or malformed repository data in {}: {}"""

    exit_code = 13


class IndexUnreadable(FormatError):
    """Unreadable index file {}: {} (the packs still hold what it listed: `vmkeep repair index` rebuilds the index from them)"""  # noqa: E501

    exit_code = 13


class DataCorrupt(StorageError):
    """Corrupt data in {}: {}"""

    exit_code = 13


class UnitCorrupt(DataCorrupt):
    """Corrupt data in {}: {}

    A compression unit (repository version 4) that does not decode: every piece inside it is
    damaged.  ``blobs`` lists the ids of those the caller knows (at least the one it read)."""

    def __init__(self, where: str, detail: str, blobs: list[bytes]) -> None:
        shown = ", ".join(b.hex()[:16] for b in blobs[:8])
        more = f" and {len(blobs) - 8} more" if len(blobs) > 8 else ""
        super().__init__(where, f"{detail}; damaged chunk(s): {shown}{more}")
        self.blobs = list(blobs)


class BlobMissing(StorageError):
    """Chunk {} is missing from the repository (pack {})."""

    exit_code = 13


class RestoreTooLarge(StorageError):
    """The restore target {} cannot hold disk {} of {} bytes: {}"""

    exit_code = 15


class PointNotFound(StorageError):
    """No restore point matches {!r}."""

    exit_code = 14

    def __init__(self, ref: str, hint: str = "") -> None:
        super().__init__(ref)
        self.hint = hint

    def get_message(self) -> str:
        message = super().get_message()
        return f"{message} {self.hint}" if self.hint else message


class WrongPointKind(StorageError):
    """Restore point {} is of kind {!r}: {}"""

    exit_code = 14


class AmbiguousPoint(StorageError):
    """Restore point prefix {!r} is ambiguous: {}"""

    exit_code = 14


class RepositoryDamaged(StorageError):
    """Repository check found {} problem(s)."""

    exit_code = 13


class RepositoryLocked(StorageError):
    """Repository {} is locked: {}"""

    exit_code = 11


class LockLost(StorageError):
    """Lost the repository lock {} (it was removed as stale); nothing was committed."""

    exit_code = 11


class LeaseExpired(LockLost):
    """Lease {} was not refreshed for {} (prune may have judged it stale); nothing was committed."""

    exit_code = 11


class LockReleaseHung(StorageError):
    """Releasing lock {} hung: its refresh did not finish within {} (see `vmkeep unlock`).

    The target stopped answering a refresh write.  Release deleted the lock object anyway, and the
    refresh thread deletes it again if its write completes; should the process end first, the
    object stays until it is stale and ``vmkeep unlock`` removes it."""

    exit_code = 20


class UnknownPointKind(StorageError):
    """Restore point {} has kind {!r}, which this version cannot enumerate; prune refuses to run."""

    exit_code = 13


class WrongPassword(StorageError):
    """Wrong password: no key of repository {} opens with it."""

    exit_code = 12


class PasswordUnreadable(StorageError):
    """Cannot take the repository password from {}: {}"""

    exit_code = 12


class KeysUnreadable(StorageError):
    """No key file of repository {} can be read ({}): no password opens it until a key file is put back from a copy of the repository (keys/)"""  # noqa: E501

    exit_code = 13


class RepositoryRolledBack(StorageError):
    """Repository {} was rolled back or replaced: {}"""

    exit_code = 18


class EncryptionDowngrade(StorageError):
    """Repository {} has key files but a config without encryption: refusing it (tampered?)."""

    exit_code = 13


class PasswordRequired(StorageError):
    """Repository {} is encrypted: set VMKEEP_PASSWORD, _PASSWORD_FILE or _PASSWORD_COMMAND."""

    exit_code = 12


class RestoreTargetError(StorageError):
    """Cannot restore to {}: {}"""

    exit_code = 15


class RestoreTargetMissing(RestoreTargetError):
    """Cannot restore to {}: the folder {} does not exist"""


class RestoreTargetNotWritable(RestoreTargetError):
    """Cannot restore to {}: {} (permission denied or read-only)"""


class RestoreTargetExists(RestoreTargetError):
    """{} exists: pass --overwrite to replace it"""


class RestoreTargetNotRegular(RestoreTargetError):
    """{} is a {}, not a regular file: images are restored into regular files only"""


class RestoreTargetIsDevice(RestoreTargetNotRegular):
    """{} is a block device, not a regular file: pass --device to write the disk into it (what it holds now is lost)"""  # noqa: E501


class RestoreTargetNotDevice(RestoreTargetError):
    """Cannot restore to {} with --device: {}"""


class RestoreDeviceIncomplete(RestoreTargetError):
    """{} may hold a partly restored disk: {} (restore it again)"""


class RestoreStreamClosed(RestoreTargetError):
    """Cannot restore to {}: the reader went away after {} bytes"""


class RestoreDeviceBusy(RestoreTargetError):
    """Cannot restore to {}: the device is in use (mounted, or held by another program): {}"""
