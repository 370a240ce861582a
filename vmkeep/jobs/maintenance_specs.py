"""Typed specs of the maintenance jobs: verify, retention (forget/prune), licence report, RPO
check, copies, tape.

Like the backup specs (:mod:`vmkeep.jobs.specs`) these are pydantic models: Prefect shows them
as forms and refuses an invalid one before a flow run starts (an empty repository, library or
point; a subset ``8/7``; a keep rule ``3x``; a retention with no rule at all), and the CLI builds
the same objects with :func:`vmkeep.jobs.specs.build` (exit code 14 naming each bad field).
Durations (``keep_within``, ``grace``) stay text (``30d``, ``4h``, as the CLI takes them) and are
checked with :func:`vmkeep.storage.retention.parse_duration`.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from vmkeep.jobs import limits
from vmkeep.jobs.specs import Spec
from vmkeep.storage.checker import parse_subset
from vmkeep.storage.retention import Policy, parse_duration


def _empty_if_none(value: Any) -> Any:
    return [] if value is None else value


#: A list of names, ids or repositories; ``None`` (a blank Prefect form field, a CLI option not
#: given) is the empty list.
Items = Annotated[list[str], BeforeValidator(_empty_if_none)]


def _duration(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    try:
        parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None
    return value


class VerifySpec(Spec):
    """The scheduled verify of a repository: check (reading a subset of the packs' data), then
    per VM's and per file backup's newest point a test restore, and optionally file-system and
    boot checks (VMs) and a YARA malware scan (both)."""

    repo: str = Field(min_length=1, description="repository URL or path")
    subset: str = Field(
        "1/7", description="packs whose data is read: N/M, */M (a different M-th each week), "
        "P% (at random), 1/1"
    )
    test_restores: bool = Field(
        True, description="restore one file of each VM's and each file backup's newest point")
    names: list[str] = Field(default_factory=list,
                             description="only these VMs and file backups (all when empty)")
    fs_checks: bool = Field(False, description="run each volume's checker (e2fsck -n, …)")
    boot_checks: bool = Field(False, description="boot each VM's newest point in QEMU")
    boot_timeout: float = Field(300.0, gt=0, le=limits.MAX_TIMEOUT_S,
                                description="seconds per boot")
    yara_rules: list[str] = Field(
        default_factory=list, description="scan each VM's and each file backup's newest point "
        "with these YARA rule "
        "files or folders (none: no malware scan)"
    )

    @field_validator("subset")
    @classmethod
    def _subset(cls, value: str) -> str:
        parse_subset(value)
        return value

    @field_validator("names", "yara_rules", mode="before")
    @classmethod
    def _no_names(cls, value: Any) -> Any:
        return [] if value is None else value


class VerifyPointSpec(Spec):
    """Prove one restore point: its file systems (``fs``), that it boots (``boot``), or that no
    guest file matches YARA rules (``yara``)."""

    repo: str = Field(min_length=1, description="repository URL or path")
    point: str = Field(min_length=1, description="restore point id, prefix, NAME@latest, latest")
    check: Literal["fs", "boot", "yara"]
    record: bool = Field(True, description="store the verdict under verifications/")
    timeout: float | None = Field(
        None, gt=0, le=limits.MAX_TIMEOUT_S,
        description="seconds per checker (fs) or until the sign of life (boot)"
    )
    volumes: list[str] = Field(default_factory=list, description="fs, yara: only these volumes")
    rules: list[str] = Field(
        default_factory=list, description="yara: rule files or folders (on the machine that runs "
        "the check)"
    )
    max_file_bytes: int = Field(256 << 20, gt=0, description="yara: larger files are skipped")
    find_clean: bool = Field(
        False, description="yara: scan the point, then older points of its name, newest first, "
        "until one is clean (the point to restore after an infection)"
    )
    expect: str | None = Field(None, description="boot: regex on the serial console")
    accelerator: Literal["kvm", "tcg"] | None = Field(None, description="boot: default auto")
    firmware: Literal["bios", "efi"] | None = Field(None, description="boot: default auto")
    screenshot_path: str | None = Field(None, description="boot: also write the screen here")

    @field_validator("expect")
    @classmethod
    def _a_regular_expression(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value, re.MULTILINE)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {exc}") from None
        return value

    @model_validator(mode="after")
    def _yara_needs_rules(self) -> VerifyPointSpec:
        if self.check == "yara" and not self.rules:
            raise ValueError("verify yara needs rules: --rules FILE or FOLDER")
        return self


class RetentionSpec(Spec):
    """Forget restore points — by keep rules per VM / source, or by id — then optionally prune.

    A rule counts points per group (kind and name); the newest point of a group is always kept
    by the rules (an explicit id may forget it).
    """

    repo: str = Field(min_length=1, description="repository URL or path")
    ids: Items = Field(default_factory=list, description="forget these points (no rules)")
    keep_last: int = Field(0, ge=0)
    keep_hourly: int = Field(0, ge=0)
    keep_daily: int = Field(0, ge=0)
    keep_weekly: int = Field(0, ge=0)
    keep_monthly: int = Field(0, ge=0)
    keep_yearly: int = Field(0, ge=0)
    keep_within: str | None = Field(None, description="keep points this close to the newest")
    names: Items = Field(default_factory=list, description="only these VMs / sources")
    prune_after: bool = Field(True, description="prune unreferenced data afterwards")
    grace: str = Field("4h", description="prune never deletes objects younger than this")
    repack_below: float = Field(0.5, ge=0.0, le=1.0)
    max_unused: float = Field(0.10, ge=0.0, le=1.0)
    dry_run: bool = False


    @field_validator("keep_within", mode="before")
    @classmethod
    def _blank_within(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("keep_within")
    @classmethod
    def _within(cls, value: str | None) -> str | None:
        return _duration(value, "keep_within")

    @field_validator("grace")
    @classmethod
    def _grace(cls, value: str) -> str:
        _duration(value, "grace")
        return value

    @model_validator(mode="after")
    def _rules_or_ids(self) -> RetentionSpec:
        if self.ids and not self.policy().empty():
            raise ValueError("give restore point ids or keep rules, not both")
        if not self.ids and self.policy().empty():
            raise ValueError("the policy keeps everything: give at least one keep rule (or ids)")
        return self

    def policy(self) -> Policy:
        """The keep rules as a :class:`~vmkeep.storage.retention.Policy`."""
        return Policy(
            last=self.keep_last,
            hourly=self.keep_hourly,
            daily=self.keep_daily,
            weekly=self.keep_weekly,
            monthly=self.keep_monthly,
            yearly=self.keep_yearly,
            within=parse_duration(self.keep_within) if self.keep_within else None,
        )


class PruneSpec(Spec):
    """Delete data no restore point references, older than ``grace``; runs beside backups."""

    repo: str = Field(min_length=1, description="repository URL or path")
    grace: str = Field("4h", description="never delete objects younger than this")
    repack_below: float = Field(0.5, ge=0.0, le=1.0)
    max_unused: float = Field(0.10, ge=0.0, le=1.0)
    dry_run: bool = False

    @field_validator("grace")
    @classmethod
    def _grace(cls, value: str) -> str:
        _duration(value, "grace")
        return value

    def grace_period(self) -> timedelta:
        return parse_duration(self.grace)


class LicenceReportSpec(Spec):
    """Licence use over the repositories of every data mover (never refuses anything)."""

    repos: Items = Field(
        default_factory=list,
        description="repositories to count (an unset mover target, '', is skipped)",
    )
    window_days: int = Field(90, ge=1, le=36500,
                             description="count workloads protected in the last N days")
    licence_file: str | None = Field(None, description="licence path (default: the installed)")



class RpoCheckSpec(Spec):
    """Whether every backup name has a restore point newer than the recovery point objective."""

    repos: Items = Field(
        default_factory=list,
        description="repositories to look at (an unset mover target, '', is skipped)",
    )
    max_age_hours: float = Field(
        26.0, gt=0, le=limits.MAX_RPO_HOURS,
        description="the newest point of each name must be younger than this"
    )
    names: Items = Field(
        default_factory=list, description="backup names to watch (glob patterns; none: all)"
    )
    exclude: Items = Field(
        default_factory=list, description="backup names not to watch (glob; retired VMs)"
    )

    def label(self) -> str:
        """``26 h``: the run's name and its report's title."""
        return f"{self.max_age_hours:g} h"



class CopySpec(Spec):
    """Copy restore points from one repository into another (off-site copies)."""

    repo: str = Field(min_length=1, description="destination repository URL or path")
    from_repo: str = Field(min_length=1, description="source repository URL or path")
    points: Items = Field(
        default_factory=list, description="source points (ids, prefixes, NAME@latest); none: all"
    )
    names: Items = Field(
        default_factory=list, description="only points of these backup names (glob patterns)"
    )
    latest: bool = Field(False, description="only the newest point of each backup name")

    def label(self) -> str:
        """``from SRC``: the run's name and its report's title."""
        return f"from {self.from_repo}"



class TapeCopySpec(Spec):
    """Copy restore points from a disk repository onto cartridges of a media pool."""

    repo: str = Field(min_length=1, description="repository URL or path")
    library: str = Field(min_length=1, description="tape library name (vmkeep tape library add)")
    pool: str = Field("daily", min_length=1, description="media pool")
    points: Items = Field(default_factory=list, description="restore points (ids, prefixes)")
    all_new: bool = Field(False, description="every point not yet on a cartridge of the pool")
    latest: bool = Field(
        False, description="the newest point of each backup name, unless already in the pool"
    )
    drive: int | None = Field(None, ge=0, description="drive index (default: a free one)")
    licence_file: str | None = None


    @model_validator(mode="after")
    def _something(self) -> TapeCopySpec:
        chosen = [bool(self.points), self.all_new, self.latest]
        if sum(chosen) != 1:
            raise ValueError("name restore points, or set one of all_new and latest")
        return self


class TapeRestoreSpec(Spec):
    """Bring a restore point back from tape into a disk repository."""

    point: str = Field(min_length=1, description="restore point id or prefix")
    to_repo: str = Field(min_length=1, description="repository to restore into")
    library: str = Field(min_length=1, description="tape library name")
    catalog_repo: str | None = Field(
        None, description="repository holding the tape catalog (default: to_repo)"
    )
    drive: int | None = Field(None, ge=0)

    @field_validator("catalog_repo", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value
