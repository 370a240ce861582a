"""The inventory at scale: a lab of its own with 2,000 lightweight VMs (``light_vms``, no disks)
lists every VM through paged ``RetrievePropertiesEx`` / ``ContinueRetrievePropertiesEx``; the lab
pages like vCenter (at most 500 objects per answer), so a reader ignoring the token would miss
VMs.  The time it takes is measured by ``bench/inventory_scale.py``, not asserted here."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from vmkeep.lab import runner
from vmkeep.lab.build import missing_prerequisites
from vmkeep.vsphere import inventory
from vmkeep.vsphere.connection import connect
from vmkeep.vsphere.credentials import Credentials
from vmkeep.vsphere.tls import TLSOptions

pytestmark = [pytest.mark.lab, pytest.mark.slow]
LIGHT = 2000


@pytest.fixture(scope="module")
def big_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[runner.LabInfo]:
    why = missing_prerequisites()
    if why:
        pytest.skip(f"ESX lab: {why}")
    state = tmp_path_factory.mktemp("esx-lab-2000")
    info = runner.up(n_small=0, port=0, state=state, light_vms=LIGHT)
    try:
        yield info
    finally:
        runner.down(state)


@pytest.fixture
def session(big_lab: runner.LabInfo) -> Iterator[Any]:
    s = connect(big_lab.url, Credentials(big_lab.user, big_lab.password),
                TLSOptions(cafile=big_lab.cafile))
    yield s
    s.close()


def test_list_vms_sees_all_2000_light_vms(big_lab: runner.LabInfo, session: Any) -> None:
    assert big_lab.light_vms == LIGHT
    vms = inventory.list_vms(session)
    light = [v for v in vms if v.name.startswith("light-")]
    assert len(light) == LIGHT
    assert len({v.instance_uuid for v in light}) == LIGHT
    assert {v.name for v in vms} >= {v["name"] for v in big_lab.vms}
    assert all(v.folder.endswith("/vm/light") and not v.disks for v in light)
    assert {v.host for v in light} == {h["name"] for h in big_lab.hosts}
    selected = inventory.select_vms(vms, patterns=["light-19*"])
    assert len(selected) == 100


def test_the_lab_pages_and_every_page_is_fetched(session: Any) -> None:
    from pyVmomi import vim, vmodl

    pc = vmodl.query.PropertyCollector
    content = session.content
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.VirtualMachine], True)
    try:
        spec = pc.FilterSpec(
            objectSet=[pc.ObjectSpec(obj=view, skip=True, selectSet=[
                pc.TraversalSpec(name="view", type=vim.view.ContainerView, path="view")])],
            propSet=[pc.PropertySpec(type=vim.VirtualMachine, pathSet=["name"])],
        )
        # Without maxObjects the lab still caps a page (as vCenter does) and hands out a token.
        first = content.propertyCollector.RetrievePropertiesEx([spec], pc.RetrieveOptions())
        assert len(first.objects) == 500 and first.token
        content.propertyCollector.CancelRetrievePropertiesEx(first.token)
        with pytest.raises(vmodl.fault.InvalidArgument):  # a cancelled token is gone
            content.propertyCollector.ContinueRetrievePropertiesEx(first.token)
        names = [o.propSet[0].val for o in inventory.retrieve_paged(session, spec, page_size=300)]
    finally:
        view.Destroy()
    assert len(names) == len(set(names)) and len(names) >= LIGHT
    assert sum(n.startswith("light-") for n in names) == LIGHT
