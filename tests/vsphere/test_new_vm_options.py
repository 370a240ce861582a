"""What a restore may change about the VM it recreates (NewVmOptions).  ``--keep-identity`` asks
for each NIC's old MAC under the address type vSphere can grant it:
static stays static, vCenter-assigned and ESX-generated MACs are asked for as such (never as
static: ESX powers on static VMware MACs only up to 00:50:56:3F:FF:FF)."""

from __future__ import annotations

import pytest

from vmkeep.vsphere.vmconfig import kept_address_type


@pytest.mark.parametrize(("nic", "kind"), [
    ({"mac": "00:50:56:9a:01:02", "address_type": "assigned"}, "assigned"),
    ({"mac": "00:50:56:01:02:03", "address_type": "manual"}, "manual"),
    ({"mac": "00:0c:29:aa:bb:cc", "address_type": "generated"}, "generated"),
    ({"mac": "00:50:56:9a:01:02", "address_type": "Assigned"}, "assigned"),
    # backups that recorded no type: judged by the range
    ({"mac": "00:50:56:9a:01:02"}, "assigned"),
    ({"mac": "00:50:56:BF:ff:ff", "address_type": None}, "assigned"),
    ({"mac": "00:50:56:3f:ff:ff"}, "manual"),
    ({"mac": "00:50:56:40:00:00"}, "assigned"),
    ({"mac": "00:0C:29:01:02:03"}, "generated"),
    ({"mac": "02:00:00:00:00:01"}, "manual"),  # another OUI: only static can keep it
    ({"mac": "00:50:56:zz:00:01"}, "manual"),  # not a MAC vSphere would give: as it is
])
def test_the_address_type_a_kept_mac_is_asked_for(nic: dict[str, str], kind: str) -> None:
    assert kept_address_type(nic) == kind


@pytest.mark.parametrize(("fmt", "disk", "want"), [
    ("same", {"thin": True}, (True, False, "thin")),
    ("same", {"thin": False, "eager_zeroed": True}, (False, True, "eagerzeroedthick")),
    ("same", {"thin": False}, (False, False, "thick")),  # saved before eager_zeroed
    ("same", {"thin": True, "eager_zeroed": True}, (True, False, "thin")),  # thin wins
    ("thin", {"thin": False, "eager_zeroed": True}, (True, False, "thin")),
    ("thick", {"thin": True}, (False, False, "thick")),
    ("eagerzeroedthick", {"thin": True}, (False, True, "eagerzeroedthick")),
])
def test_disk_formats(fmt: str, disk: dict[str, bool], want: tuple[bool, bool, str]) -> None:
    """``--disk-format``: thinProvisioned, eagerlyScrub and the label of a restored disk."""
    from vmkeep.vsphere.vmconfig import NewVmOptions

    got = NewVmOptions(disk_format=fmt).provisioning(disk)
    assert (got.thin, got.eagerly_scrub, got.label) == want
