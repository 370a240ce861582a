"""Flow: weekly verify — read back a sample of the stored data and test-restore a file per VM.

DAG: ``check`` (one task: structure of every manifest, index and pack, plus ``check
--read-data`` on the subset ``subset`` of the packs: ``"1/7"`` reads a seventh, ``"*/7"`` a
different seventh each ISO week — a weekly run reads everything in seven weeks — and ``"1/1"``
all) → for the newest restore point of each VM: ``test-restore`` (one task per VM: find a
regular file in the point's first browsable volume, restore it through the safe writer into a
scratch folder, and compare its size with the listing; every chunk read is decoded and its id
checked) → with ``fs_checks``, ``verify-filesystems`` (one task per VM: each volume's own
read-only checker over an NBD export, recorded under ``verifications/``) → with ``boot_checks``,
``verify-boot`` (one task per VM, one at a time: the point booted in QEMU from the repository; a
markdown artifact shows its screen).

Read-only on the repository (no licence check, no lock).  The flow fails (:class:`VerifyFailed`,
exit code 13) when check finds a problem or a test restore does not bring the file back; the
table artifact ``verify`` lists every VM either way.
"""

from __future__ import annotations

import base64
import os
import tempfile
from typing import Any

from vmkeep import clock
from vmkeep.browse.bootverify import verify_boot
from vmkeep.browse.fsverify import verify_filesystems
from vmkeep.browse.listing import list_image_path
from vmkeep.browse.local import restore_image_paths
from vmkeep.browse.point import PointImage
from vmkeep.errors import VmkeepError
from vmkeep.storage import verifications
from vmkeep.storage.checker import check_repository
from vmkeep.storage.repository import Repository
from vmkeep.tasks.runtime import NO_CACHE, flow, publish_markdown, publish_table, step, task
from vmkeep.tasks.source_credentials import refuse_secret_parameters

#: files larger than this are not picked for the test restore (keeps the run short)
MAX_SAMPLE_BYTES = 64 << 20
#: directories visited at most while looking for a file
MAX_DIRS = 200


class VerifyFailed(VmkeepError):
    """Verify found problems: {}"""

    exit_code = 13


def parse_subset(text: str) -> tuple[int, int]:
    """``"N/M"`` → ``(N, M)`` with ``1 <= N <= M``; ``"*/M"`` rotates N by the ISO week, so a
    weekly run reads every pack once in M weeks."""
    n, _, m = text.partition("/")
    if n == "*":
        n = str(clock.now().isocalendar().week % int(m) + 1)
    pair = (int(n), int(m))
    if not 1 <= pair[0] <= pair[1]:
        raise ValueError(f"subset {text!r}: want N/M with 1 <= N <= M")
    return pair


@task(name="check", cache_policy=NO_CACHE, persist_result=False)
def check_task(repo: Repository, subset: str) -> dict[str, Any]:
    """Structure of everything plus the data of ``subset`` of the packs."""
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


@task(name="test-restore", cache_policy=NO_CACHE, persist_result=False)
def test_restore(repo: Repository, point_id: str) -> dict[str, Any]:
    """Restore one file of ``point_id`` into a scratch folder; ``ok`` when it came back whole."""
    point = repo.load_point(point_id)
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


def newest_vm_points(repo: Repository, names: list[str] | None = None) -> list[str]:
    """The newest restore point id of each VM (by instanceUuid, else name)."""
    newest: dict[str, str] = {}
    for p in repo.list_points():  # oldest first
        if p.kind == "vm" and (not names or p.name in names):
            newest[str(p.meta.get("instance_uuid") or p.name)] = p.id
    return list(newest.values())


@task(name="verify-filesystems", cache_policy=NO_CACHE, persist_result=False)
def verify_fs_task(repo: Repository, repo_url: str, point_id: str) -> dict[str, Any]:
    """Each volume's own read-only checker over an NBD export of ``point_id``; recorded in
    ``verifications/`` (see :mod:`vmkeep.browse.fsverify`)."""
    result = verify_filesystems(repo, repo_url, point_id)
    verifications.record(repo, point_id, "fs", result.ok, result.to_json())
    point = repo.load_point(point_id)
    detail = "; ".join(f"{c.volume} {c.fs or '?'} {c.result}" for c in result.checks)
    return {"vm": point.name, "point": point.short_id, "ok": result.ok and bool(result.checks),
            "detail": detail or "no volume to check"}


@task(name="verify-boot", cache_policy=NO_CACHE, persist_result=False)
def verify_boot_task(
    repo: Repository, repo_url: str, point_id: str, timeout: float = 300.0
) -> dict[str, Any]:
    """Boot ``point_id`` in QEMU from NBD exports (no network) and wait for a login prompt;
    recorded under ``verifications/`` with its screenshot, which the run's artifact shows."""
    result = verify_boot(repo, repo_url, point_id, timeout=timeout)
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
    publish_markdown(
        f"verify-boot-{point.short_id}",
        f"**{point.name}** @ {point.short_id}: {verdict} in {result.seconds:.0f} s "
        f"({result.accelerator}, {result.firmware}); "
        f"{result.bytes_fetched / 1e6:.1f} MB of {result.disk_bytes / 1e6:.0f} MB read{image}",
        f"Boot verification of {point.name}",
    )
    return {"vm": point.name, "point": point.short_id, "ok": result.passed,
            "detail": f"{verdict} in {result.seconds:.0f} s ({result.accelerator})"}


@flow(name="verify", persist_result=False, log_prints=False)
def verify(
    repo: str,
    subset: str = "1/7",
    test_restores: bool = True,
    names: list[str] | None = None,
    fs_checks: bool = False,
    boot_checks: bool = False,
    boot_timeout: float = 300.0,
) -> dict[str, Any]:
    """Check ``repo`` (reading the data of ``subset`` of the packs) and test-restore a file
    from the newest point of each VM (``names``: only these VMs); with ``fs_checks`` also run
    each volume's file-system checker on those points (needs nbdkit and the checkers on the
    mover) and with ``boot_checks`` boot each of them in QEMU (one at a time); raises on
    problems."""
    refuse_secret_parameters(repo=repo)
    repository = Repository.open(repo)
    check = step(check_task, repository, subset)
    wanted = test_restores or fs_checks or boot_checks
    newest = newest_vm_points(repository, names) if wanted else []
    restores = [step(test_restore, repository, pid) for pid in newest] if test_restores else []
    fs_rows = [step(verify_fs_task, repository, repo, pid) for pid in newest] if fs_checks else []
    boot_rows = (
        [step(verify_boot_task, repository, repo, pid, boot_timeout) for pid in newest]
        if boot_checks
        else []
    )
    rows = [
        {"what": "check", "ok": check["ok"],
         "detail": f"{check['points']} points, {check['packs']} packs, "
                   f"{check['bytes_read']:,} bytes read ({subset}), "
                   f"{len(check['problems'])} problem(s)"},
        *({"what": f"restore {r['vm']}@{r['point']}", "ok": r["ok"],
           "detail": f"{r['file']}: {r.get('detail', '')}"} for r in restores),
        *({"what": f"fs {r['vm']}@{r['point']}", "ok": r["ok"], "detail": r["detail"]}
          for r in fs_rows),
        *({"what": f"boot {r['vm']}@{r['point']}", "ok": r["ok"], "detail": r["detail"]}
          for r in boot_rows),
    ]
    publish_table("verify", rows, "Verify: check --read-data and test restores")
    if check["problems"]:
        first = check["problems"][0]
        rows[0]["detail"] += f"; first: {first['kind']} {first['object']} {first['detail']}"
    failed = [f"{r['what']} ({r['detail']})" for r in rows if not r["ok"]]
    result = {
        "check": check,
        "restores": restores,
        "filesystems": fs_rows,
        "boots": boot_rows,
        "failed": failed,
    }
    if failed:
        raise VerifyFailed(", ".join(failed))
    return result
