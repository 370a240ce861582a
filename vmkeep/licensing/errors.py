"""Licensing errors.  Every one exits with code 17 ("licence refuses the operation") except bad
planner input, which is ordinary bad input (14).

A class's docstring's first line is its message template (see :mod:`vmkeep.errors`).
"""

from __future__ import annotations

from collections.abc import Mapping

from vmkeep.errors import InputError, VmkeepError


class LicenceError(VmkeepError):
    """Licence error: {}"""

    exit_code = 17


class LicenceNotInstalled(LicenceError):
    """No licence installed at {} (install one with `vmkeep license install FILE`)."""


class LicenceInvalid(LicenceError):
    """Licence file {} rejected: {}"""


class LicenceTampered(LicenceInvalid):
    """Licence file {} rejected: it has been modified or is corrupt (signature does not match)."""


class LicenceWrongKey(LicenceInvalid):
    """Licence file {} rejected: signed by key {}, but this installation trusts key {}."""


class LicenceExpired(LicenceError):
    """Licence {} for {} expired on {}."""


class LicenceNotYetValid(LicenceError):
    """Licence {} for {} is not valid before {}."""


class PublicKeyError(LicenceError):
    """Cannot use licence public key {}: {}"""


class LicenceRefused(LicenceError):
    """Licence refuses the {}: {}"""

    def __init__(self, operation: str, reason: str, missing: Mapping[str, int] | None = None):
        super().__init__(operation, reason)
        #: SKU value -> how many more licences the operation needs (empty for expired/invalid).
        self.missing: dict[str, int] = dict(missing or {})


class PlanInputError(InputError):
    """Bad licence-planning input: {}"""


class FeatureUnavailable(LicenceError):
    """{} is not available yet: {}"""

    exit_code = 2
