"""The JSON header of a restore-point manifest, validated by schema and type before any use.

A manifest's header (Parquet schema metadata ``b"vmkeep"``, see :mod:`vmkeep.storage.manifest`
and :mod:`vmkeep.storage.file_manifest`) comes from the repository, which an attacker may be able
to write.  Every field a reader uses is checked here, with pydantic in strict JSON mode, so a
header of the wrong shape (a list instead of an object, a number where a name belongs, a naive
time, a disk size no disk has) is one :class:`~vmkeep.storage.errors.FormatError` naming the
manifest — never a ``KeyError``/``TypeError`` traceback later, in ``list`` or anywhere else.

Bounds: a disk is at most :data:`MAX_DISK_SIZE` (64 TiB, above vSphere's 62 TB VMDK limit); its
chunk size at most ``MAX_BLOB_SIZE``; times carry a time zone (they are compared with each other).
Unknown keys are kept (newer writers may add some); known keys must have their type.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from vmkeep.storage.codec import MAX_BLOB_SIZE
from vmkeep.storage.errors import FormatError

POINT_FORMAT = "vmkeep-restore-point"
#: The largest disk a manifest may describe (vSphere's VMDK limit is 62 TB).
MAX_DISK_SIZE = 64 << 40
#: Longest restore-point name, host name or free-text field accepted in a header.
MAX_TEXT = 4096

#: Header versions read: 1; 2 (image/VM points with CBT, audit and consistency keys); 3 (file
#: points whose chunk lists may hold zero runs).  Image and file points number their versions
#: apart and each kind accepts its own: an older reader, which knows 1 and 2 only, refuses a
#: version-3 file point instead of misreading its zero runs.  Kinds not listed: the image ones.
VERSIONS_BY_KIND: dict[str, tuple[int, ...]] = {"files": (1, 3)}
IMAGE_VERSIONS = (1, 2)

Text = Annotated[str, Field(max_length=MAX_TEXT)]
PointId = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class DiskHeader(BaseModel):
    """One entry of ``disks``."""

    model_config = ConfigDict(strict=True, extra="allow")

    index: Annotated[int, Field(ge=0, lt=1 << 31)]
    name: Text
    size: Annotated[int, Field(ge=0, le=MAX_DISK_SIZE)]
    chunk_size: Annotated[int, Field(gt=0, le=MAX_BLOB_SIZE)]
    mode: Text = "full"
    reason: Text = ""


class PointHeader(BaseModel):
    """The header of every restore point (image, VM and file points)."""

    model_config = ConfigDict(strict=True, extra="allow")

    format: Literal["vmkeep-restore-point"]
    version: Literal[1, 2, 3]
    kind: Annotated[str, Field(max_length=64)]
    name: Text
    time: AwareDatetime
    parent: PointId | None = None
    hostname: Text = ""
    disks: list[DiskHeader]
    meta: dict[str, Any] = Field(default_factory=dict)
    source: Text = ""
    client: Text = ""
    stats: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _version_of_kind(self) -> PointHeader:
        if self.version not in VERSIONS_BY_KIND.get(self.kind, IMAGE_VERSIONS):
            raise ValueError(f"version {self.version} is not a version of {self.kind!r} points")
        return self


def parse_header(raw: bytes | str, where: str) -> dict[str, Any]:
    """Validate a manifest header (its JSON text); return it as a dict whose known keys have
    their documented types (``time`` re-serialized in ISO 8601).  Raises ``FormatError``."""
    try:
        model = PointHeader.model_validate_json(raw)
    except ValidationError as exc:
        raise FormatError(where, f"bad manifest header: {_reason(exc)}") from None
    header = model.model_dump(mode="json")
    header["time"] = model.time.isoformat()
    return header


def header_time(header: dict[str, Any]) -> datetime:
    """The (time-zone aware) time of a header returned by :func:`parse_header`."""
    return datetime.fromisoformat(header["time"])


def _reason(exc: ValidationError) -> str:
    """The first problem of a validation error, in one short line (values never echoed)."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return "invalid"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or "header"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}: {first.get('msg', 'invalid')}{more}"
