"""Typed SCSI errors: transport failures and CHECK CONDITION with decoded sense data.

Two families, because callers react differently:

* :class:`TransportError` — the command's outcome is *unknown* (connection lost, target died,
  timeout, ioctl failure).  A write that ends in a transport error must be treated as not
  written; nothing above this layer may report success after one.
* :class:`CheckCondition` — the device answered with sense data (:class:`~vmkeep.scsi.sense.Sense`):
  sense key, ASC/ASCQ and the stream bits (FM, EOM, ILI).  Subclasses name the cases tape code
  acts on; :func:`check_condition` picks the class from the sense.

All are :class:`vmkeep.errors.VmkeepError` with exit code 15 (target error).
"""

from __future__ import annotations

from typing import ClassVar

from vmkeep.errors import VmkeepError
from vmkeep.scsi.sense import (
    BLANK_CHECK,
    ILLEGAL_REQUEST,
    MEDIUM_ERROR,
    NOT_READY,
    UNIT_ATTENTION,
    VOLUME_OVERFLOW,
    Sense,
)


class ScsiError(VmkeepError):
    """SCSI: {}"""

    exit_code: ClassVar[int] = 15


class TransportError(ScsiError):
    """SCSI transport failed ({}): {} — the command's outcome is unknown"""

    is_transient = True


class LoginFailed(TransportError):
    """SCSI transport: no session with {}: {} (no command was sent)"""


class DeviceNotFound(ScsiError):
    """SCSI device not found: {}"""


class CheckCondition(ScsiError):
    """SCSI {}: CHECK CONDITION {}"""

    def __init__(self, what: str, sense: Sense, residual: int = 0) -> None:
        super().__init__(what, sense.describe())
        self.sense = sense
        #: Bytes the transport reports as not transferred (0 when unknown).
        self.residual = residual


class NotReady(CheckCondition):
    """SCSI {}: not ready ({})"""


class MediumError(CheckCondition):
    """SCSI {}: medium error ({})"""


class IllegalRequest(CheckCondition):
    """SCSI {}: illegal request ({})"""


class UnitAttention(CheckCondition):
    """SCSI {}: unit attention ({}); the device was reset or its medium changed"""

    is_transient = True


class BlankCheck(CheckCondition):
    """SCSI {}: blank check, end of data ({})"""


class VolumeOverflow(CheckCondition):
    """SCSI {}: volume overflow, the cartridge is full ({})"""


_BY_KEY: dict[int, type[CheckCondition]] = {
    NOT_READY: NotReady,
    MEDIUM_ERROR: MediumError,
    ILLEGAL_REQUEST: IllegalRequest,
    UNIT_ATTENTION: UnitAttention,
    BLANK_CHECK: BlankCheck,
    VOLUME_OVERFLOW: VolumeOverflow,
}


def check_condition(what: str, sense: Sense, residual: int = 0) -> CheckCondition:
    """The error class for ``sense`` (``CheckCondition`` itself for keys without a class)."""
    return _BY_KEY.get(sense.key, CheckCondition)(what, sense, residual)
