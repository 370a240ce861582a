"""Scan a restore point's guest files with YARA rules (``vmkeep verify yara``) — what Veeam calls
a backup scan before a secure restore: is the malware or ransomware note that hit production
already in this point?

:func:`load_rules` compiles the operator's rules: files, or folders whose ``*.yar`` / ``*.yara``
files (recursively, sorted) are taken; each file under its own namespace (its path relative to
the folder given, without the suffix), so two files may name rules alike.  A file that does not
compile is :class:`RulesInvalid` (exit code 14) naming the file and the line; no rules at all,
too.

:func:`scan_point` reads every regular file of every browsable volume of an image or VM point
(or of the volumes named) through the guest file-system parsers, never the host's: nothing is
mounted, and the repository is only read.  :func:`scan_files_point` does the same for a file
point's files (one "volume", :data:`FILES_VOLUME`).  Contracts:

* **What is scanned.**  Regular files up to ``max_file_bytes`` (default 256 MiB) each, whole, in
  memory; larger ones are skipped and counted (``skipped_large``; the first
  :data:`LISTED` named).  Symlinks, devices and NTFS alternate data streams are not scanned.
* **Damage is reported, not fatal.**  A directory that cannot be listed or a file that cannot be
  read (a damaged guest file system), or a file whose scan hits the per-file time limit, is
  listed in ``errors`` and the scan goes on — a scan with errors is incomplete, and says so.
* **The verdict.**  ``ok`` is true when no file matched; every match names the volume, the path,
  its size and the rules (``namespace.rule``) that matched, each file once.
* **Each content matched once per run.**  Given a :class:`Verdicts` (one per job run: the points
  of a ``--find-clean`` chain, the newest points of every VM a verify job scans), a file whose
  content (BLAKE3) was already matched against the same rules (their files' bytes) gets that
  verdict without YARA running again — the unchanged files of the older points, the system
  files every VM shares.  The file is still read (its content decides); ``files_cached`` counts
  them.  A match that timed out or failed is not remembered.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from blake3 import blake3

from vmkeep.browse.point import PointImage
from vmkeep.disks import FileSystem
from vmkeep.disks.errors import DiskError
from vmkeep.errors import InputError
from vmkeep.lru import LRU

if TYPE_CHECKING:
    from vmkeep.guestfiles.tree import PointTree

#: the one "volume" of a file point's scan (matches name ``files:/path``)
FILES_VOLUME = "files"
#: default size limit of a scanned file
MAX_FILE_BYTES = 256 << 20
#: seconds YARA may spend on one file before it is reported as an error
MATCH_TIMEOUT_S = 60
#: how many skipped or failed files are named (the rest are counted)
LISTED = 20
SUFFIXES = (".yar", ".yara")
#: verdicts one run remembers (≈ 150 bytes each: 150 MB at most)
VERDICTS_KEPT = 1_000_000


class RulesInvalid(InputError):
    """YARA rules unusable: {}"""


@dataclass
class VolumeScan:
    volume: str
    fs: str | None
    files: int = 0
    bytes: int = 0
    matches: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"volume": self.volume, "fs": self.fs, "files": self.files, "bytes": self.bytes,
                "matches": self.matches}


@dataclass
class ScanResult:
    """What :func:`scan_point` found (``to_json``: what ``verify yara --json`` prints)."""

    point: str
    rule_files: list[str]
    rules: int
    volumes: list[VolumeScan] = field(default_factory=list)
    matches: list[dict[str, Any]] = field(default_factory=list)
    skipped_large: int = 0
    skipped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    duration_s: float = 0.0
    cached: int = 0

    @property
    def ok(self) -> bool:
        return not self.matches

    @property
    def files(self) -> int:
        return sum(v.files for v in self.volumes)

    def to_json(self) -> dict[str, Any]:
        return {
            "point": self.point,
            "ok": self.ok,
            "rule_files": self.rule_files,
            "rules": self.rules,
            "volumes": [v.to_json() for v in self.volumes],
            "files_scanned": self.files,
            "files_cached": self.cached,
            "bytes_scanned": sum(v.bytes for v in self.volumes),
            "matches": self.matches,
            "skipped_large": self.skipped_large,
            "skipped": self.skipped,
            "errors": self.errors,
            "duration_s": round(self.duration_s, 3),
        }


@dataclass(frozen=True)
class Rules:
    """Compiled rules, where they came from, and the BLAKE3 of their files' names and bytes
    (what a remembered verdict is valid for)."""

    compiled: Any = field(repr=False)
    files: tuple[str, ...]
    count: int
    digest: bytes = b""


class Verdicts:
    """The rules' verdicts on file contents already matched in one run (see the module
    docstring): ``(rules digest, content BLAKE3) → matched rule names``; bounded
    (:data:`VERDICTS_KEPT`, least recently used forgotten) and thread-safe."""

    def __init__(self, capacity: int = VERDICTS_KEPT) -> None:
        self._known: LRU[tuple[bytes, bytes], tuple[str, ...]] = LRU(capacity)

    def get(self, rules: Rules, content: bytes) -> tuple[str, ...] | None:
        return self._known.get((rules.digest, content))

    def put(self, rules: Rules, content: bytes, names: tuple[str, ...]) -> None:
        self._known.put((rules.digest, content), names)


def rule_files(paths: Sequence[str]) -> dict[str, str]:
    """``{namespace: file}`` of the rule files ``paths`` name (files, or folders searched for
    ``*.yar`` / ``*.yara``)."""
    found: dict[str, str] = {}
    for given in paths:
        if os.path.isdir(given):
            for dirpath, dirnames, filenames in os.walk(given):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.lower().endswith(SUFFIXES):
                        path = os.path.join(dirpath, name)
                        rel = os.path.relpath(path, given)
                        found[os.path.splitext(rel)[0].replace(os.sep, ".")] = path
        elif os.path.isfile(given):
            found[os.path.splitext(os.path.basename(given))[0]] = given
        else:
            raise RulesInvalid(f"{given}: no such file or folder")
    if not found:
        raise RulesInvalid(f"no rule files (*.yar, *.yara) in {', '.join(paths)}")
    return found


def load_rules(paths: Sequence[str]) -> Rules:
    """Compile the rules ``paths`` name (see the module docstring)."""
    import yara

    files = rule_files(paths)
    try:
        compiled = yara.compile(filepaths=files)
    except yara.SyntaxError as exc:
        raise RulesInvalid(str(exc)) from None
    except yara.Error as exc:
        raise RulesInvalid(str(exc)) from None
    count = sum(1 for _ in compiled)
    if not count:
        raise RulesInvalid(f"{', '.join(files.values())} hold no rule")
    digest = blake3()
    for namespace, path in sorted(files.items()):
        with open(path, "rb") as f:
            body = f.read()
        for part in (namespace.encode(), body):
            digest.update(len(part).to_bytes(8, "little") + part)
    return Rules(compiled, tuple(files.values()), count, digest.digest())


def scan_point(
    img: PointImage,
    rules: Rules,
    *,
    volumes: Sequence[str] | None = None,
    max_file_bytes: int = MAX_FILE_BYTES,
    progress: Callable[[int], None] | None = None,
    verdicts: Verdicts | None = None,
) -> ScanResult:
    """Scan the files of ``img`` with ``rules`` (see the module docstring); ``verdicts``: those
    of this run so far, to reuse and add to."""
    started = time.monotonic()
    result = ScanResult(img.point.id, list(rules.files), rules.count)
    chosen = [v for v in img.volumes() if v.browsable]
    if volumes:
        chosen = [img.volume(name) for name in volumes]
    for vol in chosen:
        scan = VolumeScan(vol.name, vol.fs)
        result.volumes.append(scan)
        try:
            fs = img.filesystem(vol.name)
        except DiskError as exc:
            result.errors.append(f"{vol.name}: cannot open the file system: {exc}")
            continue
        _scan_volume(fs, vol.name, scan, rules, max_file_bytes, result, progress, verdicts)
    result.duration_s = time.monotonic() - started
    return result


def scan_files_point(
    tree: PointTree,
    rules: Rules,
    *,
    max_file_bytes: int = MAX_FILE_BYTES,
    progress: Callable[[int], None] | None = None,
    verdicts: Verdicts | None = None,
) -> ScanResult:
    """Scan the files of a file restore point (see the module docstring): one volume,
    :data:`FILES_VOLUME`."""
    started = time.monotonic()
    result = ScanResult(tree.point.id, list(rules.files), rules.count)
    scan = VolumeScan(FILES_VOLUME, None)
    result.volumes.append(scan)
    _scan_volume(tree, FILES_VOLUME, scan, rules, max_file_bytes, result, progress, verdicts)
    result.duration_s = time.monotonic() - started
    return result


def _note(items: list[str], text: str) -> None:
    if len(items) < LISTED:
        items.append(text)
    elif len(items) == LISTED:
        items.append("… (more not listed)")


def _scan_volume(
    fs: FileSystem | PointTree, volume: str, scan: VolumeScan, rules: Rules, max_file_bytes: int,
    result: ScanResult, progress: Callable[[int], None] | None, verdicts: Verdicts | None,
) -> None:

    def unlisted(path: str, exc: DiskError) -> None:
        _note(result.errors, f"{volume}:{path}: cannot list: {exc}")

    for _dirpath, _dirs, entries in fs.walk("/", unlisted):
        for entry in entries:
            if entry.type != "file":
                continue
            if entry.size > max_file_bytes:
                result.skipped_large += 1
                _note(result.skipped, f"{volume}:{entry.path} ({entry.size} bytes)")
                continue
            try:
                with fs.open_listed(entry) as stream:
                    data = stream.read()
            except DiskError as exc:
                _note(result.errors, f"{volume}:{entry.path}: cannot read: {exc}")
                continue
            content = blake3(data).digest() if verdicts is not None else b""
            names = verdicts.get(rules, content) if verdicts is not None else None
            if names is not None:
                result.cached += 1
            else:
                names = _match(rules, data, f"{volume}:{entry.path}", result)
                if names is None:
                    continue
                if verdicts is not None:
                    verdicts.put(rules, content, names)
            scan.files += 1
            scan.bytes += len(data)
            if progress is not None:
                progress(len(data))
            if names:
                scan.matches += 1
                result.matches.append({
                    "volume": volume, "path": entry.path, "size": len(data),
                    "rules": list(names),
                })


def _match(rules: Rules, data: bytes, where: str, result: ScanResult) -> tuple[str, ...] | None:
    """The names of the rules ``data`` matches, sorted; None (noted in ``result.errors``) when
    YARA failed or ran out of time on it."""
    import yara

    try:
        found = rules.compiled.match(data=data, timeout=MATCH_TIMEOUT_S)
    except yara.TimeoutError:
        _note(result.errors, f"{where}: scan took over {MATCH_TIMEOUT_S} s")
        return None
    except yara.Error as exc:
        _note(result.errors, f"{where}: {exc}")
        return None
    return tuple(sorted(f"{m.namespace}.{m.rule}" for m in found))
