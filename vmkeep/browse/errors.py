"""Typed errors of :mod:`vmkeep.browse` (the first docstring line is the message template).

Bad references (unknown volume, path) are bad input, exit code 14, like a point of the wrong kind
(:class:`vmkeep.storage.errors.WrongPointKind`);
a restore that could not bring every selected item back is :class:`RestoreIncomplete`, exit
code 3, raised by the CLI after printing its summary.
"""

from __future__ import annotations

from vmkeep.errors import InputError, VmkeepError


class BrowseError(InputError):
    """{}"""


class VolumeNotFound(BrowseError):
    """No volume {!r} in restore point {} (volumes: {})"""


class VolumeMissing(BrowseError):
    """Restore point {} holds disks: give a volume, POINT:VOLUME/PATH (volumes: {})"""


class AmbiguousVolume(BrowseError):
    """Volume name {!r} is ambiguous in restore point {}: use one of {}"""


class FilePointsUnavailable(BrowseError):
    """File restore points need vmkeep.guestfiles, which is not installed ({})"""


class RestoreIncomplete(VmkeepError):
    """Restore finished, but {} item(s) could not be restored."""

    exit_code = 3
