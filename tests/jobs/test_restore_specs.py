"""Restore specs: bad or empty values are refused before a restore starts (issue 19)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from vmkeep.flows.run import JOBS, run_flow
from vmkeep.jobs import restore_specs as rs
from vmkeep.jobs import specs
from vmkeep.storage.repository import Repository


@pytest.mark.parametrize(
    ("spec_type", "params", "field"),
    [
        (rs.RestoreVmSpec, {"repo": "/r", "point": "", "vcenter": "vc"}, "point"),
        (rs.RestoreVmSpec, {"repo": "/r", "point": "p", "vcenter": ""}, "vcenter.url"),
        (rs.RestoreVmSpec, {"repo": "/r", "point": "p", "vcenter": "vc", "transport": "ftp"},
         "transport"),
        (rs.RestoreVmSpec, {"repo": "/r", "point": "p", "vcenter": "vc", "quick_rollback": True,
                            "transport": "direct"}, "--datastore-mount"),
        (rs.RestoreVmSpec, {"repo": "/r", "point": "p", "vcenter": "vc", "transport": "hotadd"},
         "only for a quick rollback"),
        (rs.RestoreVmSpec, {"repo": "/r", "point": "p", "vcenter": "vc", "power_off_first": True},
         "--power-off applies to --quick-rollback"),
        (rs.RestoreVmSpec, {"repo": "/r", "point": "p", "vcenter": "vc", "quick_rollback": True,
                            "datastore_mounts": {"nfs": "/m"}, "name": "x", "overwrite": True,
                            "disk_format": "thin"},
         "it takes none of --name, --overwrite, --disk-format"),
        (rs.RestoreVmSpec, {"repo": "/r", "point": "p", "vcenter": "vc", "quick_rollback": True,
                            "datastore_mounts": {"nfs": "/m"}, "transport": "https"},
         "not https"),
        (rs.RestoreDiskSpec, {"repo": "/r", "point": "p", "vcenter": "vc", "vm": "", "disk": 0},
         "vm"),
        (rs.RestoreDiskSpec, {"repo": "/r", "point": "p", "vcenter": "vc", "vm": "x", "disk": -1},
         "disk"),
        (rs.RestoreImageSpec, {"repo": "", "point": "p", "target": "/t"}, "repo"),
        (rs.RestoreImageSpec, {"repo": "/r", "point": "p", "target": ""}, "target"),
        (rs.RestoreImageSpec, {"repo": "/r", "point": "p", "target": "/t", "format": "qcow2"},
         "format"),
        (rs.RestoreImageSpec, {"repo": "/r", "point": "p", "target": "/dev/sdb", "device": True,
                               "format": "vmdk"}, "raw bytes only"),
        (rs.RestoreImageSpec, {"repo": "/r", "point": "p", "target": "-", "format": "vmdk"},
         "raw bytes only"),
        (rs.RestoreImageSpec, {"repo": "/r", "point": "p", "target": "-", "device": True},
         "not a block device"),
        (rs.RestoreFilesSpec, {"repo": "/r", "point": "p", "paths": [], "target": "/t"}, "paths"),
        (rs.RestoreFilesSpec, {"repo": "/r", "point": "p", "paths": ["p1"]}, "exactly one"),
        (rs.RestoreFilesSpec, {"repo": "/r", "point": "p", "paths": ["p1"], "target": "/t",
                               "guest": "vm:/x", "vcenter": "vc"}, "exactly one"),
        (rs.RestoreFilesSpec, {"repo": "/r", "point": "p", "paths": ["p1"], "guest": "vm:/x"},
         "needs vcenter"),
        (rs.RestoreFilePointSpec, {"repo": "/r", "point": "p", "target": ""}, "target"),
        (rs.RestoreFilePointSpec, {"repo": "/r", "point": "p", "target": "/t", "password": "x"},
         "password"),
    ],
)
def test_bad_restore_specs_are_one_clear_error(
    spec_type: type[specs.Spec], params: dict[str, Any], field: str
) -> None:
    with pytest.raises(specs.InvalidSpec) as info:
        specs.build(spec_type, params)
    assert info.value.exit_code == 14
    assert field in info.value.get_message()


def test_flat_keywords_fold_into_the_target_and_defaults_hold() -> None:
    vm = specs.build(rs.RestoreVmSpec, {"repo": "/r", "point": "p", "vcenter": "vc:443",
                                        "user": "u", "cafile": "/ca", "insecure": False})
    assert vm.vcenter.url == "vc:443" and vm.vcenter.cafile == "/ca" and vm.transport == "nfc"
    local = specs.build(rs.RestoreFilesSpec, {"repo": "/r", "point": "p", "paths": ["p1/etc"],
                                              "target": "/t"})
    assert local.vcenter is None
    whole = specs.build(rs.RestoreFilePointSpec, {"repo": "/r", "point": "p", "target": "/t",
                                                  "paths": None})
    assert whole.paths == ["/"]


def test_every_restore_flow_maps_to_its_job_and_spec() -> None:
    for flow_name, (ref, spec_type) in rs.JOBS.items():
        assert JOBS[flow_name] == (ref, spec_type)
        assert ref.startswith(f"vmkeep.jobs.{flow_name.replace('-', '_')}:")


def test_an_invalid_restore_opens_nothing(tmp_path: Path) -> None:
    """Refused by the spec before the repository is opened or the target touched."""
    from vmkeep.flows.restore_image import restore_image

    repo = tmp_path / "repo"
    Repository.init(str(repo))
    target = tmp_path / "out.raw"
    with pytest.raises(specs.InvalidSpec):
        run_flow(restore_image, False, repo=str(repo), point="", target=str(target))
    assert not target.exists()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"action": "finalize", "run": "ir-1"}, "finalize needs datastore"),
        ({"action": "disk", "repo": "/r", "point": "p"}, "disk needs vm"),
        ({"repo": "/r", "point": "p", "host": "h", "datastore": "ds"},
         "start does not take datastore"),
        ({"action": "finalize", "run": "ir-1", "datastore": "ds", "host": "h"},
         "finalize does not take host"),
        ({"action": "cancel", "run": "ir-1", "nfs_port": 0, "disks": ["0"]},
         "cancel does not take disks, nfs_port"),
        ({"action": "disk", "repo": "/r", "point": "p", "vm": "v", "name": "new"},
         "disk does not take name"),
    ],
)
def test_instant_restore_takes_what_its_action_reads(params: dict[str, Any], message: str) -> None:
    """A parameter the action would ignore (a deployment's typo, a field of another action) is
    refused, not dropped without a word."""
    from pydantic import ValidationError

    from vmkeep.jobs.instant_restore import InstantRestoreSpec

    with pytest.raises(ValidationError, match=message):
        InstantRestoreSpec(vcenter="https://vc/sdk", **params)
    # what the CLI passes for each action is accepted
    InstantRestoreSpec(vcenter="https://vc/sdk", repo="/r", point="p", host="h", name=None,
                       folder=None, resource_pool=None, networks=None, connect_networks=False,
                       nfs_address="10.0.0.5", listen="10.0.0.5", nfs_port=2049,
                       nfs_clients=None, yara_rules=[])
    InstantRestoreSpec(vcenter="https://vc/sdk", action="disk", repo="/r", point="p", vm="v",
                       disks=[], nfs_address="127.0.0.1", listen="127.0.0.1", nfs_port=0,
                       nfs_clients=None, yara_rules=[])
