"""Flow: weekly verify — read back a sample of the stored data and test-restore a file per VM.

DAG: ``check`` (one task: structure of every manifest, index and pack, plus ``check
--read-data`` on the subset ``subset`` of the packs: ``"1/7"`` reads a seventh, ``"*/7"`` a
different seventh each ISO week — a weekly run reads everything in seven weeks — and ``"1/1"``
all) → for the newest restore point of each VM: ``test-restore`` (one task per VM: find a
regular file in the point's first browsable volume, restore it through the safe writer into a
scratch folder, and compare its size with the listing; every chunk read is decoded and its id
checked).

Read-only on the repository (no licence check, no lock).  The flow fails (:class:`VerifyFailed`,
exit code 13) when check finds a problem or a test restore does not bring the file back; the
table artifact ``verify`` lists every VM either way.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

from vmkeep import clock
from vmkeep.browse.listing import list_image_path
from vmkeep.browse.local import restore_image_paths
from vmkeep.browse.point import PointImage
from vmkeep.errors import VmkeepError
from vmkeep.storage.checker import check_repository
from vmkeep.storage.repository import Repository
from vmkeep.tasks.runtime import NO_CACHE, flow, publish_table, step, task

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


@flow(name="verify", persist_result=False, log_prints=False)
def verify(
    repo: str,
    subset: str = "1/7",
    test_restores: bool = True,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Check ``repo`` (reading the data of ``subset`` of the packs) and test-restore a file
    from the newest point of each VM (``names``: only these VMs); raises on problems."""
    repository = Repository.open(repo)
    check = step(check_task, repository, subset)
    restores = (
        [step(test_restore, repository, pid) for pid in newest_vm_points(repository, names)]
        if test_restores
        else []
    )
    rows = [
        {
            "what": "check",
            "ok": check["ok"],
            "detail": f"{check['points']} points, {check['packs']} packs, "
            f"{check['bytes_read']:,} bytes read ({subset}), "
            f"{len(check['problems'])} problem(s)",
        },
        *(
            {
                "what": f"restore {r['vm']}@{r['point']}",
                "ok": r["ok"],
                "detail": f"{r['file']}: {r.get('detail', '')}",
            }
            for r in restores
        ),
    ]
    publish_table("verify", rows, "Verify: check --read-data and test restores")
    if check["problems"]:
        first = check["problems"][0]
        rows[0]["detail"] += f"; first: {first['kind']} {first['object']} {first['detail']}"
    failed = [f"{r['what']} ({r['detail']})" for r in rows if not r["ok"]]
    result = {"check": check, "restores": restores, "failed": failed}
    if failed:
        raise VerifyFailed(", ".join(failed))
    return result
