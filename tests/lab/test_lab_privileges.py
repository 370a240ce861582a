"""The lab's restricted user (``backup-restricted@vsphere.local``, :mod:`vmkeep.lab.access`):
NoPermission on exactly the calls its three missing privileges guard, 403 on ``/folder`` reads,
and an AuthorizationManager that answers truthfully for both users."""

from __future__ import annotations

import contextlib
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from pyVim.connect import Disconnect, SmartConnect
from pyVmomi import vim, vmodl

from tests.lab.lab_helpers import find_vm, split_ds_path, wait
from vmkeep.lab.access import RESTRICTED_LACKS, RESTRICTED_USER

pytestmark = pytest.mark.lab


def _restricted(lab: Any) -> dict[str, Any]:
    return next(u for u in lab.info.users if u["name"] == RESTRICTED_USER)


@pytest.fixture(scope="module")
def rsi(esx_lab: Any) -> Iterator[Any]:
    u = _restricted(esx_lab)
    si = SmartConnect(host=esx_lab.host, port=esx_lab.port, user=u["name"], pwd=u["password"],
                      sslContext=esx_lab.ssl_context())
    yield si
    with contextlib.suppress(Exception):
        Disconnect(si)


def test_the_restricted_user_is_reported_and_needs_its_own_password(esx_lab: Any) -> None:
    u = _restricted(esx_lab)
    assert sorted(u["lacks"]) == sorted(RESTRICTED_LACKS) and u["password"]
    with pytest.raises(vim.fault.InvalidLogin):
        SmartConnect(host=esx_lab.host, port=esx_lab.port, user=u["name"],
                     pwd=esx_lab.password, sslContext=esx_lab.ssl_context())


def test_query_changed_disk_areas_is_refused_naming_the_privilege(rsi: Any, si: Any) -> None:
    vm = find_vm(rsi, "small05")
    with pytest.raises(vim.fault.NoPermission) as caught:
        vm.QueryChangedDiskAreas(snapshot=None, deviceKey=2000, startOffset=0, changeId="*")
    assert caught.value.privilegeId == "VirtualMachine.Provisioning.DiskRandomRead"
    assert caught.value.object._moId == vm._moId
    # The administrator is not refused (the lab's own CBT rules answer: no snapshot given).
    with pytest.raises(vmodl.fault.InvalidArgument):
        find_vm(si, "small05").QueryChangedDiskAreas(
            snapshot=None, deviceKey=2000, startOffset=0, changeId="*")


def test_datastore_browsing_is_refused(rsi: Any) -> None:
    vm = find_vm(rsi, "small05")
    ds = vm.datastore[0]
    with pytest.raises(vim.fault.NoPermission) as caught:
        wait(ds.browser.SearchDatastore_Task(f"[{ds.name}]", None))
    assert caught.value.privilegeId == "Datastore.Browse"
    assert caught.value.object._moId == ds._moId
    # Calls the user may make still work: reading the VM's properties, its snapshots' absence.
    assert vm.runtime.powerState == "poweredOn"


def test_folder_reads_answer_403_but_the_administrator_reads(esx_lab: Any, rsi: Any,
                                                             si: Any) -> None:
    path = esx_lab.vm("small05")["disks"][0]["datastore_path"]
    ds, rel = split_ds_path(path)
    url = (f"https://{esx_lab.host}:{esx_lab.port}/folder/{rel}"
           f"?dcPath={esx_lab.datacenter}&dsName={ds}")
    ctx = ssl.create_default_context(cafile=esx_lab.cafile)

    def get(cookie: str) -> int:
        req = urllib.request.Request(url, headers={"Cookie": cookie, "Range": "bytes=0-15"})
        try:
            with urllib.request.urlopen(req, context=ctx) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as exc:
            body = exc.read().decode()
            assert "Datastore.Browse" in body
            return exc.code

    assert get(rsi._stub.cookie) == 403
    assert get(si._stub.cookie) in (200, 206)


def test_authorization_manager_answers_per_user(esx_lab: Any, rsi: Any, si: Any) -> None:
    privs = [*RESTRICTED_LACKS, "VirtualMachine.State.CreateSnapshot", "No.Such.Privilege"]
    for conn, lacking in ((rsi, set(RESTRICTED_LACKS)), (si, set())):
        content = conn.RetrieveContent()
        key = content.sessionManager.currentSession.key
        [ent] = content.authorizationManager.HasPrivilegeOnEntities(
            [content.rootFolder], key, privs)
        granted = {a.privId: a.isGranted for a in ent.privAvailability}
        want = {p: p not in lacking for p in privs[:-1]} | {"No.Such.Privilege": False}
        assert granted == want
    content = si.RetrieveContent()
    [res] = content.authorizationManager.FetchUserPrivilegeOnEntities(
        [content.rootFolder], RESTRICTED_USER)
    assert "VirtualMachine.State.CreateSnapshot" in res.privileges
    assert not set(RESTRICTED_LACKS) & set(res.privileges)
    [res] = content.authorizationManager.FetchUserPrivilegeOnEntities(
        [content.rootFolder], esx_lab.user)
    assert set(RESTRICTED_LACKS) <= set(res.privileges)
