"""The file-name catalog behind ``vmkeep find``: one immutable Parquet object per image point.

Format ``vmkeep-catalog`` version 2, stored at ``catalog/<point id>.parquet`` (the id of the
restore point it describes).  Built lazily by the first ``find`` that needs it (or at backup time
through :func:`index_point_files`), from the point alone, so it never changes once written and
is published with one atomic put.  Losing it costs only a rebuild; prune may delete the catalog
of a deleted point.  Table, one row per entry of every browsable volume (directories included)::

    volume    string   canonical volume name (``disk0-p1``)
    path      string   path inside the volume (``/etc/hosts``) in the catalog's text form
                       (:func:`path_text`): a backslash doubled, a byte that is not UTF-8
                       as ``\\xNN``, an unpaired UTF-16 surrogate (NTFS) as ``\\uXXXX``
    name      string   last component of ``path``, the same form
    type      string   file | dir | symlink | other
    size      int64    bytes (files)
    mtime_ns  int64    modification time, ns since the epoch

Schema metadata ``b"vmkeep"``: ``{"format": "vmkeep-catalog", "version": 2, "point": id,
"entries": n, "warnings": [...]}`` (volumes that could not be walked in full are named in
``warnings``).  Version 1 (same columns) wrote an undecodable byte as Python's
``backslashreplace`` does (``\\udce9``) and a backslash as itself — ambiguous; it is still read,
its paths taken into version 2's form on load (a ``\\udcNN`` there read as the byte).  A
catalog is an index for searching, never a source of data: a restore reads the point itself.

Stored as Parquet with page checksums (:mod:`vmkeep.storage.catalogs`).  A damaged catalog
is built again and replaced by the next reader that needs it; ``vmkeep check`` reports it.

Points of kind ``files`` need no catalog: their manifest already lists every path.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vmkeep.browse import fastlist
from vmkeep.browse.point import PointImage
from vmkeep.disks.errors import DiskError
from vmkeep.errors import UsageError
from vmkeep.globs import char_class
from vmkeep.storage.catalogs import catalog_key, decode_table, encode_table
from vmkeep.storage.errors import DataCorrupt, FormatError, ObjectNotFound, StorageError
from vmkeep.storage.repository import PointSummary, Repository

log = logging.getLogger(__name__)

CATALOG_FORMAT = "vmkeep-catalog"
CATALOG_VERSION = 2
#: versions readers accept (1: the older text form of paths, converted on load)
READ_VERSIONS = (1, 2)
SCHEMA = pa.schema(
    [
        ("volume", pa.string()),
        ("path", pa.string()),
        ("name", pa.string()),
        ("type", pa.string()),
        ("size", pa.int64()),
        ("mtime_ns", pa.int64()),
    ]
)
IMAGE_KINDS = ("image", "vm")


_UNTEXT = re.compile(r"\\(\\|x[89a-f][0-9a-f]|u[0-9a-f]{4})")
_V1_ESCAPE = re.compile(r"\\u(d[89a-f][0-9a-f]{2})")


def path_text(s: str) -> str:
    """``s`` (a name as vmkeep's readers give it: bytes that are not UTF-8 kept by
    ``surrogateescape``, NTFS's unpaired UTF-16 surrogates kept as they are) as valid UTF-8
    text for the catalog, reversibly: a backslash doubled, an undecodable byte as ``\\xNN``
    (as ``ls`` shows it), any other surrogate as ``\\uXXXX``.  :func:`text_path` inverts it."""
    if "\\" not in s and s.isascii():
        return s
    out = []
    for ch in s:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def text_path(text: str) -> str:
    """The name :func:`path_text` made ``text`` of (exactly: the bytes a restore writes)."""
    if "\\" not in text:
        return text

    def one(m: re.Match[str]) -> str:
        esc = m.group(1)
        if esc == "\\":
            return "\\"
        return chr(0xDC00 + int(esc[1:], 16) if esc[0] == "x" else int(esc[1:], 16))

    return _UNTEXT.sub(one, text)


def _v1_path(text: str) -> str:
    """A version-1 catalog's path in version 2's form (version 1 escaped surrogates with
    ``backslashreplace`` and left backslashes alone: ``\\udcNN`` is taken for the escape)."""
    if "\\" not in text:
        return text
    return path_text(_V1_ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), text))


def _from_v1(table: pa.Table) -> pa.Table:
    """A version-1 table with its ``path`` and ``name`` columns in version 2's form."""
    for column in ("path", "name"):
        values = table.column(column)
        if pc.any(pc.match_substring(values, "\\")).as_py():
            converted = pa.array([_v1_path(v) for v in values.to_pylist()], pa.string())
            table = table.set_column(table.schema.get_field_index(column), column, converted)
    return table


def build_catalog(img: PointImage) -> pa.Table:
    """Walk every browsable volume of ``img`` (metadata only) into a catalog table."""
    cols: dict[str, list[Any]] = {f.name: [] for f in SCHEMA}
    warnings: list[str] = []
    for vol in img.volumes():
        if not vol.browsable:
            continue
        def skipped(path: str, exc: DiskError, volume: str = vol.name) -> None:
            warnings.append(f"{volume}{path}: {exc}")

        try:
            fs = img.filesystem(vol.name)
            for e in fastlist.iter_entries(fs, skipped):
                cols["volume"].append(vol.name)
                cols["path"].append(path_text(e.path))
                cols["name"].append(path_text(e.name))
                cols["type"].append(e.type)
                cols["size"].append(e.size)
                cols["mtime_ns"].append(e.mtime_ns)
        except DiskError as exc:
            warnings.append(f"{vol.name}: {exc}")
    meta = {
        "format": CATALOG_FORMAT,
        "version": CATALOG_VERSION,
        "point": img.point.id,
        "entries": len(cols["path"]),
        "warnings": warnings + list(img.warnings),
    }
    table = pa.Table.from_pydict(cols, schema=SCHEMA)
    return table.replace_schema_metadata({b"vmkeep": json.dumps(meta).encode()})


class CatalogOfUnknownVersion(FormatError):
    """{}: a catalog of a version this vmkeep does not know ({}): a newer vmkeep wrote it"""


def encode_catalog(table: pa.Table) -> bytes:
    return encode_table(table)


def decode_catalog(data: bytes, point_id: str) -> pa.Table:
    """The catalog of ``point_id`` in ``data``; raises :class:`CatalogOfUnknownVersion`, or
    :class:`FormatError` when it is damaged (see :mod:`vmkeep.storage.catalogs`) or does not
    describe that point."""
    key = catalog_key(point_id)
    table = decode_table(data, key)
    try:
        meta = json.loads((table.schema.metadata or {})[b"vmkeep"])
        if not isinstance(meta, dict):
            raise ValueError("its metadata is not an object")
    except (KeyError, ValueError) as exc:
        raise FormatError(key, f"unreadable catalog: no vmkeep metadata ({exc})") from None
    if meta.get("format") != CATALOG_FORMAT:
        raise FormatError(key, "not a vmkeep catalog")
    if meta.get("version") not in READ_VERSIONS:
        raise CatalogOfUnknownVersion(key, f"version {meta.get('version')!r}")
    if meta.get("point") != point_id or not table.schema.remove_metadata().equals(SCHEMA):
        raise FormatError(key, "catalog does not describe its restore point")
    return _from_v1(table) if meta["version"] == 1 else table


def index_point_files(repo: Repository, point_id: str) -> tuple[pa.Table, bool]:
    """The catalog of image/VM point ``point_id``: read it, or build and publish it.

    Returns ``(table, built)``.  Safe to call concurrently: both writers publish the same
    content under the same name.  Backup flows may call it right after committing a point.
    A stored catalog that cannot be read is an index lost, never an error: one that is damaged
    (or describes another point) is built again from the point and replaces it, with a logged
    warning (``built`` is True; a target that refuses the put — immutable objects — keeps the
    damaged one, logged); one of a newer version is left as it is and the table is built for
    this call only (``built`` is False).
    """
    key = catalog_key(point_id)
    try:
        return decode_catalog(repo.backend.get(key), point_id), False
    except ObjectNotFound:
        damaged = None
    except CatalogOfUnknownVersion as exc:
        log.warning("%s; reading restore point %s itself instead", exc.get_message(), point_id[:8])
        with PointImage(repo, repo.load_point(point_id)) as img:
            return build_catalog(img), False
    except (FormatError, DataCorrupt) as exc:
        damaged = exc
        log.warning("%s; building it again from restore point %s", exc.get_message(),
                    point_id[:8])
    with PointImage(repo, repo.load_point(point_id)) as img:
        table = build_catalog(img)
    try:
        repo.backend.put(key, encode_catalog(table))
    except StorageError as exc:
        if damaged is None:
            raise
        log.warning("could not replace the damaged catalog %s: %s", key, exc.get_message())
    return table, True


def catalog_warnings(table: pa.Table) -> list[str]:
    """The volumes a catalog could not walk in full (its metadata's ``warnings``)."""
    meta = json.loads((table.schema.metadata or {}).get(b"vmkeep", b"{}"))
    return [str(w) for w in meta.get("warnings", [])]


def glob_regex(pattern: str) -> str:
    """A shell glob as an anchored RE2 regular expression: ``*`` and ``?`` do not match ``/``,
    ``**`` matches anything, ``[...]`` / ``[!...]`` are classes."""
    out, i = ["^"], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 1
        elif c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[" and (bracket := char_class(pattern, i)) is not None:
            out.append(bracket[0])
            i = bracket[1] - 1
        else:
            out.append(re.escape(c))
        i += 1
    out.append("$")
    return "".join(out)


@dataclass(frozen=True)
class Match:
    """One entry found; ``path`` is the name itself (as ``ls`` and ``restore files`` take it)."""

    point: PointSummary
    volume: str | None
    path: str
    type: str
    size: int
    mtime_ns: int

    def to_json(self) -> dict[str, Any]:
        from vmkeep.browse.listing import iso

        return {
            "point": self.point.id,
            "short_id": self.point.id[:8],
            "name": self.point.name,
            "kind": self.point.kind,
            "time": self.point.time.isoformat(),
            "volume": self.volume,
            "path": self.path,
            "ref": f"{self.point.id[:8]}:{self.volume or ''}{self.path}",
            "type": self.type,
            "size": self.size,
            "mtime": iso(self.mtime_ns),
        }


def _matching(table: pa.Table, pattern: str) -> pa.Table:
    """Rows whose name (path, for a pattern with ``/``) matches the glob ``pattern``, which may
    hold bytes that are not UTF-8 (``surrogateescape``, as the shell passed them): the pattern
    is taken into the catalog's text form first, so a backslash in it matches a backslash."""
    column = table.column("path" if "/" in pattern else "name")
    try:
        mask = pc.match_substring_regex(column, glob_regex(path_text(pattern)), ignore_case=True)
    except pa.ArrowInvalid as exc:  # a class such as [z-a]
        raise UsageError(f"not a valid pattern: {pattern!r} ({exc})") from None
    return table.filter(mask)


def file_point_table(repo: Repository, point_id: str) -> pa.Table:
    """A file point's entries in the catalog's table shape (``volume`` null)."""
    from vmkeep.storage.file_manifest import load_file_point

    fp = load_file_point(repo, point_id)
    paths = [path_text(os.fsdecode(e.path)) for e in fp.entries]
    return pa.Table.from_pydict(
        {
            "volume": [None] * len(paths),
            "path": paths,
            "name": [p.rsplit("/", 1)[-1] for p in paths],
            "type": [e.type for e in fp.entries],
            "size": [e.size for e in fp.entries],
            "mtime_ns": [e.mtime_ns for e in fp.entries],
        },
        schema=SCHEMA,
    )


def find(
    repo: Repository,
    pattern: str,
    name: str | None = None,
    *,
    built: list[str] | None = None,
    warnings: list[tuple[str, str]] | None = None,
) -> Iterator[Match]:
    """Entries whose name (or, for a pattern with ``/``, whose path) matches the glob
    ``pattern``, case-insensitively, in every restore point (of ``name``), oldest first.
    Catalogs missing for image points are built on the way (their ids appended to ``built``);
    volumes a catalog could not walk in full (a damaged file system) are appended to
    ``warnings`` as ``(point id, warning)``: a search there may have missed files.  An empty
    pattern (an empty variable in a script) is a :class:`~vmkeep.errors.UsageError`: it matched
    the nameless root of every file point."""
    if not pattern:
        raise UsageError("find: the pattern is empty (use '*' to list every name)")
    for summary in repo.list_points(name):
        if summary.kind in IMAGE_KINDS:
            table, new = index_point_files(repo, summary.id)
            if new and built is not None:
                built.append(summary.id)
            if warnings is not None:
                warnings.extend((summary.id, w) for w in catalog_warnings(table))
        elif summary.kind == "files":
            table = file_point_table(repo, summary.id)
        else:
            continue
        for row in _matching(table, pattern).to_pylist():
            yield Match(summary, row["volume"], text_path(row["path"]), row["type"], row["size"],
                        row["mtime_ns"])
