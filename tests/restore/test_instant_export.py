"""The instant-restore NFS export on its own (no lab): nfs-ganesha serves a restore point's disk
beside its descriptor; a user-space NFS client (libnfs) reads the point's bytes and writes land
in the overlay, never the repository; stopping leaves no process or mount behind."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from tests.restore.restore_helpers import vmkeep
from vmkeep.browse import instant_export
from vmkeep.lab.nfsmount import NfsClient
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.skipif(
    shutil.which("ganesha.nfsd") is None or shutil.which("nbdfuse") is None,
    reason="nfs-ganesha / nbdfuse not installed",
)
SIZE = 6 * 1024 * 1024 + 4096


@pytest.fixture(scope="module")
def point(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("instant-export")
    img = d / "disk.raw"
    data = bytearray(os.urandom(SIZE))
    data[2 << 20:3 << 20] = bytes(1 << 20)  # a hole
    img.write_bytes(bytes(data))
    repo = d / "repo"
    assert vmkeep("init", repo=repo).returncode == 0
    res = vmkeep("backup", "image", str(img), "--name", "disk", repo=repo)
    assert res.returncode == 0, res.stderr
    point_id = Repository.open(str(repo)).list_points()[0].id
    return {"repo": str(repo), "id": point_id, "data": bytes(data)}


def tree(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if "locks" not in os.path.relpath(p, root):
                out[p] = hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def processes_of(run: Path) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if str(run) in cmd and state != "Z":
            found.append(cmd)
    return found + [m for m in Path("/proc/self/mountinfo").read_text().splitlines()
                    if str(run) in m]


def test_export_serves_the_point_and_keeps_writes_out_of_the_repository(point, tmp_path):
    run = tmp_path / "run"
    before = tree(point["repo"])
    ready = instant_export.start(run, {
        "repo": point["repo"], "point": point["id"], "folder": "vm1",
        "disks": [{"index": 0, "capacity": SIZE}], "host": "127.0.0.1", "port": 0,
        "pseudo": "/vmkeep/test", "clients": ["127.0.0.1"],
    })
    try:
        assert ready["disks"] == ["vm1/disk0.vmdk"] and ready["port"] > 0
        nfs = NfsClient(f"nfs://127.0.0.1/vmkeep/test?version=4&nfsport={ready['port']}")
        assert sorted(nfs.listdir("/vm1")) == ["disk0-flat.vmdk", "disk0.vmdk"]
        desc = nfs.open("/vm1/disk0.vmdk", os.O_RDONLY)
        text = nfs.pread(desc, 4096, 0).decode()
        nfs.close(desc)
        assert 'createType="monolithicFlat"' in text and '"disk0-flat.vmdk"' in text
        fh = nfs.open("/vm1/disk0-flat.vmdk", os.O_RDWR)
        assert nfs.pread(fh, SIZE, 0) == point["data"]
        nfs.pwrite(fh, b"\xa5" * 10000, 1 << 20)
        got = nfs.pread(fh, 10000, 1 << 20)
        nfs.close(fh)
        assert got == b"\xa5" * 10000
        # files ESX writes (vmx, logs) land in the run's store
        new = nfs.open("/vm1/vm1.vmx", os.O_RDWR, 0o644)
        nfs.pwrite(new, b'displayName = "vm1"\n', 0)
        nfs.close(new)
        assert (run / "store" / "vm1" / "vm1.vmx").read_bytes() == b'displayName = "vm1"\n'
        assert tree(point["repo"]) == before
    finally:
        stopped = instant_export.stop(run, int(ready["pid"]))
    assert stopped["bytes_fetched"] > 0
    assert processes_of(run) == []
    assert tree(point["repo"]) == before
    # a new export starts from the point again: the overlay died with the old one
    run2 = tmp_path / "run2"
    ready = instant_export.start(run2, {
        "repo": point["repo"], "point": point["id"], "folder": "vm1",
        "disks": [{"index": 0, "capacity": SIZE}], "host": "127.0.0.1", "port": 0,
        "pseudo": "/vmkeep/test2", "clients": ["127.0.0.0/8"],
    })
    try:
        nfs = NfsClient(f"nfs://127.0.0.1/vmkeep/test2?version=4&nfsport={ready['port']}")
        fh = nfs.open("/vm1/disk0-flat.vmdk", os.O_RDONLY)
        assert nfs.pread(fh, 10000, 1 << 20) == point["data"][1 << 20:(1 << 20) + 10000]
        nfs.close(fh)
    finally:
        instant_export.stop(run2, int(ready["pid"]))
    assert processes_of(run2) == []


def test_export_of_a_missing_point_fails_with_the_reason_and_leaves_nothing(point, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(instant_export.InstantExportFailed) as info:
        instant_export.start(run, {
            "repo": point["repo"], "point": "0" * 12, "folder": "vm1",
            "disks": [{"index": 0, "capacity": SIZE}], "host": "127.0.0.1", "port": 0,
            "pseudo": "/vmkeep/bad", "clients": ["127.0.0.1"],
        })
    assert "000000000000" in str(info.value) or "point" in str(info.value).lower()
    assert processes_of(run) == []


def test_only_the_allowed_clients_may_mount_the_export(point, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(instant_export.InstantExportFailed, match="not an IP address"):
        instant_export.start(run, {
            "repo": point["repo"], "point": point["id"], "folder": "vm1",
            "disks": [{"index": 0, "capacity": SIZE}], "host": "127.0.0.1", "port": 0,
            "pseudo": "/vmkeep/x", "clients": ["*; } EXPORT { Path = /"],
        })
    ready = instant_export.start(run, {
        "repo": point["repo"], "point": point["id"], "folder": "vm1",
        "disks": [{"index": 0, "capacity": SIZE}], "host": "127.0.0.1", "port": 0,
        "pseudo": "/vmkeep/other", "clients": ["192.0.2.10"],
    })
    try:
        with pytest.raises(OSError):
            nfs = NfsClient(f"nfs://127.0.0.1/vmkeep/other?version=4&nfsport={ready['port']}")
            nfs.listdir("/vm1")
    finally:
        instant_export.stop(run, int(ready["pid"]))
    assert processes_of(run) == []


def test_a_repository_url_with_a_password_is_refused_before_anything_starts(tmp_path):
    from vmkeep.browse import instant
    from vmkeep.errors import InputError

    with pytest.raises(InputError) as info:
        instant.start(None, "sftp://backup:canary-secret@nas/repo", "x", vcenter="vc", host="h")
    assert "canary-secret" not in str(info.value)


def test_an_encrypted_point_is_served_with_the_password_asked_once(tmp_path, monkeypatch):
    """The supervisor and each of its nbdkit exports get the password through pipes: a
    ``VMKEEP_PASSWORD_COMMAND`` runs once, in the process that starts the export."""
    counter = tmp_path / "asked"
    for name in ("VMKEEP_PASSWORD", "VMKEEP_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("VMKEEP_PASSWORD_COMMAND", f"echo asked >> {counter}; echo instant-pw")
    img = tmp_path / "disk.raw"
    data = os.urandom(2 << 20)
    img.write_bytes(data)
    repo = tmp_path / "repo"
    assert vmkeep("init", "--encrypt", repo=repo).returncode == 0
    res = vmkeep("backup", "image", str(img), "--name", "disk", repo=repo)
    assert res.returncode == 0, res.stderr
    counter.unlink()
    point_id = Repository.open(str(repo)).list_points()[0].id  # asks, in this process
    run = tmp_path / "run"
    ready = instant_export.start(run, {
        "repo": str(repo), "point": point_id, "folder": "vm1",
        "disks": [{"index": 0, "capacity": len(data)}, {"index": 0, "capacity": len(data)}],
        "host": "127.0.0.1", "port": 0, "pseudo": "/vmkeep/enc", "clients": ["127.0.0.1"],
    })
    try:
        nfs = NfsClient(f"nfs://127.0.0.1/vmkeep/enc?version=4&nfsport={ready['port']}")
        fh = nfs.open("/vm1/disk0-flat.vmdk", os.O_RDONLY)
        assert nfs.pread(fh, 4096, 4096) == data[4096:8192]
        nfs.close(fh)
    finally:
        instant_export.stop(run, int(ready["pid"]))
    assert counter.read_text().splitlines() == ["asked"]  # and nobody after it
    assert processes_of(run) == []
