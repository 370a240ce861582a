"""``direct`` knows what it reads: a vmfs-tools FUSE mount of a VMFS datastore is refused unless
``--allow-vmfs-mount`` (issue 14, item 3); NFS and other mounts pass."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmkeep.disks import mounts
from vmkeep.disks.mounts import VmfsMountRefused, check_direct_mount, mount_of

TABLE = """\
/dev/vda1 / ext4 rw,relatime 0 0
nas01:/export/ds2 /mnt/nfs\\040ds2 nfs4 rw,relatime,vers=4.2 0 0
vmfs6-fuse /mnt/vmfs fuse.vmfs6-fuse ro,nosuid,nodev 0 0
/dev/sdb1 /mnt/vmfs5 fuseblk ro 0 0
"""


def test_the_longest_mount_point_holding_the_path_wins() -> None:
    assert mount_of("/mnt/vmfs/vm1/vm1-flat.vmdk", TABLE) == mounts.Mount(
        "/mnt/vmfs", "fuse.vmfs6-fuse", "vmfs6-fuse"
    )
    assert mount_of("/mnt/nfs ds2/x", TABLE) == mounts.Mount(
        "/mnt/nfs ds2", "nfs4", "nas01:/export/ds2"
    )
    assert mount_of("/srv/elsewhere", TABLE).fstype == "ext4"  # type: ignore[union-attr]
    assert mount_of("/mnt/vmfsx", TABLE).mount_point == "/"  # type: ignore[union-attr]


def test_vmfs_tools_mounts_are_refused_unless_allowed() -> None:
    with pytest.raises(VmfsMountRefused) as err:
        check_direct_mount("ds1", "/mnt/vmfs", mounts_text=TABLE)
    assert err.value.exit_code == 16
    assert "--allow-vmfs-mount" in err.value.get_message()
    assert check_direct_mount("ds1", "/mnt/vmfs", allow_vmfs=True, mounts_text=TABLE)
    assert check_direct_mount("ds2", "/mnt/nfs ds2", mounts_text=TABLE).fstype == "nfs4"  # type: ignore[union-attr]
    # fuseblk names no vmfs: nothing says it is vmfs-tools (a plain disk mount passes)
    assert check_direct_mount("ds5", "/mnt/vmfs5", mounts_text=TABLE).fstype == "fuseblk"  # type: ignore[union-attr]


def test_the_machine_mount_table_is_read(tmp_path: Path) -> None:
    found = mount_of(str(tmp_path))
    assert found is not None and str(tmp_path).startswith(found.mount_point)


def test_a_backup_job_refuses_before_touching_vcenter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job checks the mounts first: no session is opened (the vCenter URL is bogus)."""
    from vmkeep.jobs import specs
    from vmkeep.jobs.backup_vm import backup_vm
    from vmkeep.runtime.local import LocalRuntime

    table = tmp_path / "mounts"
    table.write_text(f"vmfs6-fuse {tmp_path} fuse.vmfs6-fuse ro 0 0\n")
    monkeypatch.setattr(mounts, "MOUNTS_FILE", table)
    params: dict[str, Any] = {
        "repo": str(tmp_path / "repo"), "vm": "web01", "vcenter": "https://192.0.2.1",
        "transport": "direct", "datastore_mounts": {"ds1": str(tmp_path)},
    }
    with pytest.raises(VmfsMountRefused):
        backup_vm(specs.build(specs.BackupVmSpec, params), LocalRuntime())
