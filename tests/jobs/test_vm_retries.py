"""Which failed VM backups are worth another attempt (:mod:`vmkeep.jobs.vm_retries`)."""

from __future__ import annotations

import pytest

from vmkeep.errors import UsageError, VmkeepError
from vmkeep.jobs.commit import CommitInterrupted
from vmkeep.jobs.vm_retries import policy, worth_retrying
from vmkeep.licensing.errors import LicenceRefused
from vmkeep.storage.errors import TargetFull
from vmkeep.vsphere.errors import (
    ConnectionFailed,
    DatastoreSpaceLow,
    LicenceRestricted,
    NotFound,
    SnapshotFailed,
)


@pytest.mark.parametrize("exc", [
    SnapshotFailed("s", "vm", "locked"), DatastoreSpaceLow("vm", "ds1 3 %"),
    ConnectionFailed("vc", "reset"), TargetFull("/srv/backup"), RuntimeError("bug?"),
    VmkeepError("other"),
])
def test_what_a_pause_may_mend_is_retried(exc: Exception) -> None:
    assert worth_retrying(exc)


@pytest.mark.parametrize("exc", [
    NotFound("vm"), LicenceRestricted("CreateSnapshot", "free"), UsageError("bad flag"),
    KeyboardInterrupt(), CommitInterrupted("web01@x", "reset"),
])
def test_what_a_pause_cannot_mend_is_not(exc: BaseException) -> None:
    assert not worth_retrying(exc)


def test_a_licence_refusal_is_not_retried() -> None:
    assert LicenceRefused.exit_code == 17
    assert not worth_retrying(LicenceRefused("backup", "no free seat"))


def test_the_pauses_are_constant() -> None:
    rules = policy(3, 600)
    assert rules.attempts == 4 and rules.delays() == [600, 600, 600]
    assert policy(0, 600).attempts == 1
