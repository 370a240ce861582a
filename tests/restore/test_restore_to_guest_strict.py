"""``restore files --to-guest`` on the strict lab: the guest transfer goes to the ESXi host running
the VM and is verified against that host's certificate, whether vCenter is trusted by CA file or
by thumbprint; an unreachable host fails cleanly, naming the host."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vmkeep.licensing.store as store
from tests.restore.restore_helpers import run_cli
from vmkeep.flows.backup_vm import backup_vm
from vmkeep.flows.run import run_flow
from vmkeep.storage.repository import Repository

pytestmark = pytest.mark.lab
SOURCE_VM = "small06"  # kept clean for file tests; only read here
TARGET_VM = "linux01"
DEV_KEYS = Path(__file__).resolve().parent.parent / "licensing" / "keys"


@pytest.fixture(scope="module")
def point(esx_lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VMKEEP_VC_USER", esx_lab.user)
        mp.setenv("VMKEEP_VC_PASSWORD", esx_lab.password)
        mp.setenv("VMKEEP_GUEST_USER", "root")
        mp.setenv("VMKEEP_GUEST_PASSWORD", "secret")
        mp.setattr(store, "VENDOR_PUBLIC_KEY_PEM", (DEV_KEYS / "dev_public.pem").read_bytes())
        mp.setenv("VMKEEP_LICENSE", str(DEV_KEYS / "dev_licence.json"))
        repo = tmp_path_factory.mktemp("strict-guest") / "repo"
        Repository.init(str(repo), image_chunk_size=256 * 1024)
        summary = run_flow(backup_vm, False, repo=str(repo), vm=SOURCE_VM, quiesce=False,
                           vcenter=esx_lab.url, cafile=esx_lab.cafile)
        yield {"repo": str(repo), "id": summary["id"][:12]}


@pytest.mark.parametrize("trust", ["--cafile", "--thumbprint"])
def test_to_guest_verifies_the_hosts_certificate(esx_lab: Any, point: dict[str, Any],
                                                 trust: str) -> None:
    value = esx_lab.cafile if trust == "--cafile" else esx_lab.thumbprint
    dest = f"/srv/strict{trust.replace('-', '_')}"
    code, out, err = run_cli(
        "restore", "files", f"{point['id']}:p1/etc/hostname", "--to-guest",
        f"{TARGET_VM}:{dest}", "--vcenter", esx_lab.url, trust, value, "--json",
        repo=point["repo"],
    )
    assert code == 0, err
    assert json.loads(out)["files"] == 1
    expected = esx_lab.client.get_file(SOURCE_VM, "/etc/hostname")
    assert esx_lab.client.get_file(TARGET_VM, f"{dest}/hostname") == expected


def test_to_guest_on_an_unreachable_host_fails_naming_it(esx_lab: Any,
                                                         point: dict[str, Any]) -> None:
    host = esx_lab.vm(TARGET_VM)["host"]
    with esx_lab.fault("host_unreachable", host, count=0):
        code, _, err = run_cli(
            "restore", "files", f"{point['id']}:p1/etc/hostname", "--to-guest",
            f"{TARGET_VM}:/srv/unreachable", "--vcenter", esx_lab.url,
            "--thumbprint", esx_lab.thumbprint, repo=point["repo"],
        )
    assert code != 0
    assert host in err and "unreachable" in err and "Traceback" not in err
