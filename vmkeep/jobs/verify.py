"""Jobs: verify a repository (the weekly run), and prove one restore point (``verify fs`` /
``verify boot``).

:func:`verify`: ``check`` (one step: structure of every manifest, index and pack, plus ``check
--read-data`` on the subset ``subset`` of the packs: ``"1/7"`` reads a seventh, ``"*/7"`` a
different seventh each ISO week — a weekly run reads everything in seven weeks —, ``"5%"`` a
twentieth drawn at random, and ``"1/1"`` all) → for the newest restore point of each VM and of
each file backup (by name):
``test-restore <name> <point>`` (one step per point: find a regular file — in a VM point's first
browsable volume, among a file point's files — restore it through the safe writer into a scratch
folder, and compare its size with the listing; every chunk read is decoded and its id checked;
image points of ``backup image`` are not test-restored: a raw disk may hold no file system) → of
the VMs' points, with ``fs_checks``, ``verify fs <vm> <point>`` (each volume's own read-only checker
over an NBD export, recorded under ``verifications/``) → with ``boot_checks``, ``verify boot <vm>
<point>`` (one at a time: the point booted in QEMU from the repository; a markdown report shows
its screen) → with ``yara_rules``, ``verify yara <name> <point>`` (every guest file of the VMs'
and the file backups' points scanned with the rules; a match fails the run).  Read-only on the
repository (no licence check, no lock).  Fails (:class:`VerifyFailed`, exit code 13) when check
finds a problem or a test restore does not bring the file back; the table report ``verify`` lists
every point either way.

:func:`verify_point`: one point, one check (``fs`` or ``boot``): open the repository, resolve the
point, run the check, record the verdict (unless ``record`` is off), report; fails
(:class:`VerificationFailed`, exit code 13) when the point does not check clean or boot.
"""

from __future__ import annotations

import base64
import os
import tempfile
from typing import Any

from vmkeep.browse.listing import list_image_path
from vmkeep.browse.point import PointImage
from vmkeep.browse.yarascan import Verdicts
from vmkeep.errors import UsageError, VmkeepError
from vmkeep.jobs.maintenance_specs import VerifyPointSpec, VerifySpec, parse_subset
from vmkeep.markdown import literal
from vmkeep.runtime.base import NO_RETRY, Runtime, step_def
from vmkeep.storage import verifications
from vmkeep.storage.file_manifest import FilePoint, load_any_point
from vmkeep.storage.repository import Repository
from vmkeep.tasks.source_credentials import refuse_secret_parameters

#: files larger than this are not picked for the test restore (keeps the run short)
MAX_SAMPLE_BYTES = 64 << 20
#: directories visited at most while looking for a file
MAX_DIRS = 200

__all__ = ["VerificationFailed", "VerifyFailed", "parse_subset", "verify", "verify_point"]


class VerifyFailed(VmkeepError):
    """Verify found problems: {}"""

    exit_code = 13


class VerificationFailed(VmkeepError):
    """Verification failed: {}"""

    exit_code = 13

    def __init__(self, message: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        #: the check's JSON (what ``--json`` prints), also when it failed
        self.result = result


@step_def("check", NO_RETRY)
def check_step(repo: Repository, subset: str) -> dict[str, Any]:
    """Structure of everything plus the data of ``subset`` of the packs."""
    from vmkeep.storage.checker import check_repository

    report: dict[str, Any] = check_repository(
        repo, read_data=True, subset=parse_subset(subset)
    ).to_json()
    return report


def find_sample_file(img: PointImage) -> tuple[str, str, int] | None:
    """``(volume, path, size)`` of a non-empty regular file of the point, or None."""
    for vol in img.volumes():
        if not vol.browsable:
            continue
        todo, seen = ["/"], 0
        while todo and seen < MAX_DIRS:
            path = todo.pop(0)
            seen += 1
            try:
                rows = list_image_path(img, vol.name, path)
            except VmkeepError:
                continue
            for row in rows:
                if row["type"] == "file" and 0 < row["size"] <= MAX_SAMPLE_BYTES:
                    return vol.name, row["path"], int(row["size"])
            todo.extend(r["path"] for r in rows if r["type"] == "dir")
    return None


@step_def("test-restore", NO_RETRY)
def test_restore_step(repo: Repository, point_id: str) -> dict[str, Any]:
    """Restore one file of ``point_id`` (a VM or a file point) into a scratch folder; ``ok`` when
    it came back whole."""
    from vmkeep.browse.local import restore_image_paths

    point = load_any_point(repo, point_id)
    if isinstance(point, FilePoint):
        return _test_restore_files(repo, point)
    row: dict[str, Any] = {"vm": point.name, "point": point.short_id, "file": None, "ok": False}
    with PointImage(repo, point) as img:
        sample = find_sample_file(img)
        if sample is None:
            row["detail"] = "no browsable file system with a regular file"
            return row
        volume, path, size = sample
        row["file"] = f"{volume}{path}"
        with tempfile.TemporaryDirectory(prefix="vmkeep-verify-") as scratch:
            summary = restore_image_paths(img, [(volume, path)], scratch)
            restored = os.path.join(scratch, os.path.basename(path))
            got = os.path.getsize(restored) if os.path.isfile(restored) else -1
        row["ok"] = summary.ok and got == size
        row["detail"] = f"{got} of {size} bytes" + (
            f"; {len(summary.errors)} error(s)" if summary.errors else ""
        )
    return row


def _test_restore_files(repo: Repository, point: FilePoint) -> dict[str, Any]:
    """:func:`test_restore_step` of a file point: its first non-empty regular file (up to
    :data:`MAX_SAMPLE_BYTES`), restored by the file-restore writer."""
    from vmkeep.guestfiles.restore import restore_paths

    row: dict[str, Any] = {"vm": point.name, "point": point.short_id, "file": None, "ok": False}
    sample = next((e for e in point.entries
                   if e.type == "file" and 0 < e.size <= MAX_SAMPLE_BYTES), None)
    if sample is None:
        row["detail"] = "no regular file holding data (an empty or unmounted source?)"
        return row
    path = os.fsdecode(sample.path)
    row["file"] = path
    with tempfile.TemporaryDirectory(prefix="vmkeep-verify-") as scratch:
        summary = restore_paths(repo, point, [path], scratch)
        restored = os.path.join(scratch, os.path.basename(path))
        got = os.path.getsize(restored) if os.path.isfile(restored) else -1
    row["ok"] = summary.ok and got == sample.size
    row["detail"] = f"{got} of {sample.size} bytes" + (
        f"; {len(summary.errors)} error(s)" if summary.errors else "")
    return row


def newest_points(repo: Repository, names: list[str] | None = None
                  ) -> tuple[list[str], list[str]]:
    """The newest restore point ids of each VM (by instanceUuid, else name) and of each file
    backup (by name): ``(vm points, file points)``."""
    vms: dict[str, str] = {}
    files: dict[str, str] = {}
    for p in repo.list_points():  # oldest first
        if names and p.name not in names:
            continue
        if p.kind == "vm":
            vms[str(p.meta.get("instance_uuid") or p.name)] = p.id
        elif p.kind == "files":
            files[p.name] = p.id
    return list(vms.values()), list(files.values())


@step_def("verify-filesystems", NO_RETRY)
def verify_fs_step(
    repo: Repository,
    repo_url: str,
    point_id: str,
    volumes: list[str] | None = None,
    timeout: float | None = None,
    record: bool = True,
) -> dict[str, Any]:
    """Each volume's own read-only checker over an NBD export of ``point_id`` (see
    :mod:`vmkeep.browse.fsverify`); recorded in ``verifications/`` unless ``record`` is off.
    Returns the verification (``to_json``) with ``vm``, ``short_id`` and a one-line ``detail``."""
    from vmkeep.browse.fsverify import verify_filesystems

    kw: dict[str, Any] = {"volumes": volumes or None}
    if timeout is not None:
        kw["timeout"] = timeout
    result = verify_filesystems(repo, repo_url, point_id, **kw)
    if record:
        verifications.record(repo, point_id, "fs", result.ok, result.to_json())
    point = repo.load_point(point_id)
    detail = "; ".join(f"{c.volume} {c.fs or '?'} {c.result}" for c in result.checks)
    return {
        **result.to_json(),
        "vm": point.name,
        "short_id": point.short_id,
        "checked": bool(result.checks),
        "detail": detail or "no volume to check",
    }


@step_def("verify-boot", NO_RETRY)
def verify_boot_step(
    repo: Repository,
    repo_url: str,
    point_id: str,
    timeout: float | None = None,
    record: bool = True,
    expect: str | None = None,
    accelerator: str | None = None,
    firmware: str | None = None,
) -> dict[str, Any]:
    """Boot ``point_id`` in QEMU from NBD exports (no network) and wait for a login prompt;
    recorded under ``verifications/`` with its screenshot unless ``record`` is off.  Returns
    the result (``to_json``) with ``vm``, ``short_id``, a one-line ``detail``, the ``report``
    markdown (the screen inline) and the ``png`` bytes of the screen (or None)."""
    from vmkeep.browse.bootverify import verify_boot

    kw: dict[str, Any] = {"accelerator": accelerator, "firmware": firmware}
    if timeout is not None:
        kw["timeout"] = timeout
    if expect is not None:
        kw["expect"] = expect
    result = verify_boot(repo, repo_url, point_id, **kw)
    if record:
        verifications.record(
            repo, point_id, "boot", result.passed, result.to_json(), result.screenshot
        )
    point = repo.load_point(point_id)
    verdict = "booted" if result.passed else f"did not boot ({result.reason})"
    image = (
        f"\n\n![screen of {point.name}](data:image/png;base64,"
        f"{base64.b64encode(result.screenshot).decode()})"
        if result.screenshot
        else ""
    )
    report = (
        f"**{literal(point.name)}** @ {point.short_id}: {literal(verdict)} in "
        f"{result.seconds:.0f} s "
        f"({result.accelerator}, {result.firmware}); "
        f"{result.bytes_fetched / 1e6:.1f} MB of {result.disk_bytes / 1e6:.0f} MB read{image}"
    )
    return {
        **result.to_json(),
        "vm": point.name,
        "short_id": point.short_id,
        "detail": f"{verdict} in {result.seconds:.0f} s ({result.accelerator})",
        "report": report,
        "png": result.screenshot,
    }


def _publish_boot(rt: Runtime, row: dict[str, Any]) -> None:
    rt.publish_markdown(
        f"verify-boot-{row['short_id']}", row["report"], f"Boot verification of {row['vm']}"
    )


def verify(spec: VerifySpec, rt: Runtime) -> dict[str, Any]:
    """Check ``spec.repo`` and test-restore/check/boot the newest point of each VM (see the
    module docstring); raises :class:`VerifyFailed` on problems."""
    refuse_secret_parameters(repo=spec.repo)
    repository = Repository.open(spec.repo)
    check = rt.step(check_step, repository, spec.subset, step_name=f"check {spec.subset}")
    rt.log.info(
        "check: %d points, %d packs, %d bytes read (%s), %d problem(s)",
        check["points"], check["packs"], check["bytes_read"], spec.subset,
        len(check["problems"]),
    )
    wanted = spec.test_restores or spec.fs_checks or spec.boot_checks or spec.yara_rules
    newest, files = newest_points(repository, spec.names) if wanted else ([], [])
    labels = {pid: _label(repository, pid) for pid in newest + files}
    restores = [
        rt.step(test_restore_step, repository, pid, step_name=f"test-restore {labels[pid]}")
        for pid in newest + files
    ] if spec.test_restores else []
    fs_rows = []
    for pid in newest if spec.fs_checks else []:
        row = rt.step(verify_fs_step, repository, spec.repo, pid,
                      step_name=f"verify fs {labels[pid]}")
        fs_rows.append({"vm": row["vm"], "point": row["short_id"],
                        "ok": row["ok"] and row["checked"], "detail": row["detail"]})
    boot_rows = []
    for pid in newest if spec.boot_checks else []:
        row = rt.step(verify_boot_step, repository, spec.repo, pid, spec.boot_timeout,
                      step_name=f"verify boot {labels[pid]}")
        _publish_boot(rt, row)
        boot_rows.append({"vm": row["vm"], "point": row["short_id"], "ok": row["ok"],
                          "detail": row["detail"]})
    scan_rows = []
    verdicts = Verdicts()  # the VMs' shared system files are matched once
    for pid in newest + files if spec.yara_rules else []:
        scan = rt.step(verify_yara_step, repository, pid, spec.yara_rules, verdicts=verdicts,
                       step_name=f"verify yara {labels[pid]}")
        matched = ", ".join(m["path"] for m in scan["matches"][:3])
        scan_rows.append({
            "vm": labels[pid].rsplit(" ", 1)[0], "point": pid[:8], "ok": scan["ok"],
            "detail": f"{scan['files_scanned']} files, {len(scan['matches'])} matched"
                      + (f" ({matched})" if matched else "")
                      + (f", {len(scan['errors'])} not scanned" if scan["errors"] else "")})
    rows = [
        {"what": "check", "ok": check["ok"],
         "detail": f"{check['points']} points, {check['packs']} packs, "
                   f"{check['bytes_read']:,} bytes read ({spec.subset}), "
                   f"{len(check['problems'])} problem(s)"},
        *({"what": f"restore {r['vm']}@{r['point']}", "ok": r["ok"],
           "detail": (f"{r['file']}: " if r["file"] else "") + r.get("detail", "")}
          for r in restores),
        *({"what": f"fs {r['vm']}@{r['point']}", "ok": r["ok"], "detail": r["detail"]}
          for r in fs_rows),
        *({"what": f"boot {r['vm']}@{r['point']}", "ok": r["ok"], "detail": r["detail"]}
          for r in boot_rows),
        *({"what": f"yara {r['vm']}@{r['point']}", "ok": r["ok"], "detail": r["detail"]}
          for r in scan_rows),
    ]
    if check["problems"]:
        first = check["problems"][0]
        rows[0]["detail"] += f"; first: {first['kind']} {first['object']} {first['detail']}"
    rt.publish_table("verify", rows, "Verify: check --read-data and test restores")
    failed = [f"{r['what']} ({r['detail']})" for r in rows if not r["ok"]]
    for line in failed:
        rt.log.warning("verify: %s", line)
    result = {
        "check": check,
        "restores": restores,
        "filesystems": fs_rows,
        "boots": boot_rows,
        "scans": scan_rows,
        "failed": failed,
    }
    if failed:
        raise VerifyFailed(", ".join(failed))
    return result


def _not_clean(volumes: list[dict[str, Any]], point_id: str) -> str:
    """The one line ``verify fs`` fails with: which volumes are damaged and which could not be
    checked, and why (the checker's exit, an export that did not start, a missing tool)."""
    parts = [f"{v['volume']} is damaged ({v['reason']})" if v["result"] == "damaged"
             else f"{v['volume']} could not be checked ({v['reason'] or v['result']})"
             for v in volumes if v["result"] not in ("clean", "skipped")]
    return f"{'; '.join(parts)} — restore point {point_id[:8]}"


def _label(repo: Repository, point_id: str) -> str:
    """``<name> <short id>``: how steps, runs and reports name a point (from its header: the
    one ``resolve`` read for ``NAME@latest``, else its manifest's)."""
    from vmkeep.storage.manifest import point_key, read_header

    if (known := repo.known_summary(point_id)) is not None:
        return f"{known.name} {point_id[:8]}"
    key = point_key(point_id)
    try:
        name = read_header(repo.backend.get(key), key)["name"]
    except VmkeepError:
        return point_id[:8]
    return f"{name} {point_id[:8]}"


def verify_point(spec: VerifyPointSpec, rt: Runtime) -> dict[str, Any]:
    """Run ``spec.check`` on one point (see the module docstring); returns the check's JSON
    (``verify fs --json`` / ``verify boot --json``)."""
    refuse_secret_parameters(repo=spec.repo)
    repository = Repository.open(spec.repo)
    point_id = repository.resolve(spec.point)
    label = _label(repository, point_id)
    if spec.check == "fs":
        row = rt.step(verify_fs_step, repository, spec.repo, point_id, spec.volumes,
                      spec.timeout, spec.record, step_name=f"verify fs {label}")
        result = {k: row[k] for k in ("point", "ok", "volumes", "warnings")}
        rt.publish_table(
            f"verify-fs-{row['short_id']}",
            [{k: v for k, v in vol.items()} for vol in row["volumes"]],
            f"File-system check of {label}",
        )
        for warning in row["warnings"]:
            rt.log.warning("%s", warning)
        if not row["checked"]:
            raise VerificationFailed(f"{point_id[:8]} has no volume to check", result)
        if not row["ok"]:
            raise VerificationFailed(_not_clean(row["volumes"], point_id), result)
        rt.log.info("verify fs %s: %s", label, row["detail"])
        return result
    if spec.check == "yara" and spec.find_clean:
        return _find_clean(rt, spec, repository, point_id)
    if spec.check == "yara":
        return _verify_yara(rt, spec, repository, point_id, label)
    row = rt.step(verify_boot_step, repository, spec.repo, point_id, spec.timeout, spec.record,
                  spec.expect, spec.accelerator, spec.firmware,
                  step_name=f"verify boot {label}")
    if spec.screenshot_path and row["png"] is not None:
        with open(spec.screenshot_path, "wb") as f:
            f.write(row["png"])
    _publish_boot(rt, row)
    result = {k: v for k, v in row.items() if k not in ("vm", "short_id", "detail", "report",
                                                         "png")}
    if not row["ok"]:
        raise VerificationFailed(f"{point_id[:8]} did not boot: {row['reason']}", result)
    rt.log.info("verify boot %s: %s", label, row["detail"])
    return result


@step_def("verify-yara", NO_RETRY)
def verify_yara_step(
    repo: Repository,
    point_id: str,
    rules: list[str],
    volumes: list[str] | None = None,
    max_file_bytes: int = 256 << 20,
    record: bool = True,
    verdicts: Verdicts | None = None,
) -> dict[str, Any]:
    """Scan every guest file of ``point_id`` with the YARA ``rules``
    (:mod:`vmkeep.browse.yarascan`): the volumes of an image or VM point (``volumes``: only
    those), a file point's files; recorded in ``verifications/`` unless ``record`` is off.
    ``verdicts``: the run's verdicts so far (a content already matched is not matched again).
    Returns the scan (``to_json``); read-only on the repository but for the record."""
    from vmkeep.browse.yarascan import load_rules, scan_files_point, scan_point

    compiled = load_rules(rules)  # a bad rule file fails before anything is read
    point = load_any_point(repo, point_id)
    if isinstance(point, FilePoint):
        from vmkeep.guestfiles.tree import PointTree

        if volumes:
            raise UsageError(f"restore point {point_id[:8]} is a file point: it has no volumes "
                             "to choose (--volume)")
        tree = PointTree(repo, point)
        result = scan_files_point(tree, compiled, max_file_bytes=max_file_bytes,
                                  verdicts=verdicts)
        warnings: list[str] = []
    else:
        with PointImage(repo, point) as img:
            result = scan_point(img, compiled, volumes=volumes or None,
                                max_file_bytes=max_file_bytes, verdicts=verdicts)
            warnings = list(img.warnings)
    out = {**result.to_json(), "warnings": warnings}
    if record:
        verifications.record(repo, point_id, "yara", result.ok, out)
    return out


def _verify_yara(rt: Runtime, spec: VerifyPointSpec, repository: Repository, point_id: str,
                 label: str) -> dict[str, Any]:
    result = rt.step(verify_yara_step, repository, point_id, spec.rules, spec.volumes,
                     spec.max_file_bytes, spec.record, step_name=f"verify yara {label}")
    rt.publish_table(
        f"verify-yara-{point_id[:8]}",
        [{"volume": m["volume"], "path": m["path"], "rules": ", ".join(m["rules"])}
         for m in result["matches"]] or [{"volume": "-", "path": "no file matched", "rules": ""}],
        f"YARA scan of {label}",
    )
    for problem in result["errors"] + result["warnings"]:
        rt.log.warning("%s", problem)
    if result["matches"]:
        raise VerificationFailed(
            f"{len(result['matches'])} file(s) of {point_id[:8]} match YARA rules "
            f"({', '.join(m['path'] for m in result['matches'][:3])}"
            f"{', …' if len(result['matches']) > 3 else ''})", result)
    rt.log.info("verify yara %s: %d files, %d rules, nothing matched%s", label,
                result["files_scanned"], result["rules"],
                f"; {len(result['errors'])} not scanned" if result["errors"] else "")
    return result


def _find_clean(rt: Runtime, spec: VerifyPointSpec, repository: Repository,
                point_id: str) -> dict[str, Any]:
    """``verify yara --find-clean``: scan the point, then the older points of its name, newest
    first, until one matches no rule (each scan recorded); the newest clean point, or
    :class:`VerificationFailed` when none is.  Ransomware recovery: which point to restore."""
    start = next(p for p in repository.list_points() if p.id == point_id)
    chain = [p for p in reversed(repository.list_points(start.name))
             if p.kind == start.kind and p.time <= start.time]
    scanned: list[dict[str, Any]] = []
    clean = None
    verdicts = Verdicts()  # an older point's unchanged files are not matched again
    for p in chain:
        scan = rt.step(verify_yara_step, repository, p.id, spec.rules, spec.volumes,
                       spec.max_file_bytes, spec.record, verdicts,
                       step_name=f"verify yara {start.name} {p.id[:8]}")
        scanned.append({"point": p.id, "time": p.time.isoformat(), "ok": scan["ok"],
                        "files_scanned": scan["files_scanned"],
                        "files_cached": scan["files_cached"],
                        "matches": [m["path"] for m in scan["matches"]],
                        "errors": len(scan["errors"])})
        if scan["ok"]:
            clean = p.id
            break
    result = {"name": start.name, "clean": clean, "points": scanned,
              "rules": spec.rules}
    rt.publish_table(
        f"verify-yara-clean-{point_id[:8]}",
        [{"point": r["point"][:8], "time": r["time"], "clean": r["ok"],
          "matched": ", ".join(r["matches"][:3])} for r in scanned],
        f"Newest clean point of {start.name}",
    )
    if clean is None:
        raise VerificationFailed(
            f"no point of {start.name} up to {point_id[:8]} is clean ({len(scanned)} scanned)",
            result)
    rt.log.info("newest clean point of %s: %s (%d scanned)", start.name, clean[:8],
                len(scanned))
    return result
