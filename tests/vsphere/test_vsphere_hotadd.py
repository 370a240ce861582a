"""Pure parts of the hotadd transport: marks (only vmkeep's count), device names, SMBIOS byte
order, and when hot-add is possible."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from vmkeep.vsphere import hotadd
from vmkeep.vsphere.inventory import VirtualDisk

WHEN = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)


@given(
    run=st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
    key=st.integers(0, 99999),
    file=st.text(min_size=1).filter(lambda s: "\n" not in s and "\r" not in s),
)
def test_mark_round_trip(run: str, key: int, file: str) -> None:
    k = hotadd.mark_key(run, key)
    mark = hotadd.parse_mark(k, hotadd.mark_value(run, "uuid-1", file, WHEN))
    assert mark is not None
    assert (mark.run_id, mark.file_name, mark.vm_uuid, mark.created) == (run, file, "uuid-1", WHEN)


def test_only_vmkeeps_marks_count() -> None:
    good = hotadd.mark_value("r1", "u", "[ds] a/b.vmdk", WHEN)
    assert hotadd.parse_mark("vmkeep.hotadd.r1.2000", good) is not None
    assert hotadd.parse_mark("vmkeep.hotadd.r2.2000", good) is None  # key and value disagree
    assert hotadd.parse_mark("other.hotadd.r1.2000", good) is None
    assert hotadd.parse_mark("vmkeep.hotadd.r1.2000", "something else") is None
    naive = good.replace("+00:00", "")
    assert hotadd.parse_mark("vmkeep.hotadd.r1.2000", naive) is None  # time without offset


def test_device_names_and_smbios_order() -> None:
    assert hotadd.by_id_name("6000C291-2345-6789-abcd-ef0123456789") == (
        "scsi-36000c29123456789abcdef0123456789"
    )
    vsphere = "4213a7b1-8c2d-4e5f-9a0b-1c2d3e4f5a6b"
    smbios = "b1a71342-2d8c-5f4e-9a0b-1c2d3e4f5a6b"
    assert hotadd._swapped(vsphere) == smbios and hotadd._swapped(smbios) == vsphere


def test_hotadd_possible() -> None:
    disk = VirtualDisk(2000, "Hard disk 1", 1 << 20, "[ds1] vm/vm.vmdk", "ds1", True, "persistent",
                    None, 1000, 0, uuid="6000C291-2345-6789-abcd-ef0123456789")
    mover = hotadd.Mover(None, "mover", "esx01", frozenset({"ds1"}), "/dev/disk/by-id")
    assert hotadd.hotadd_possible(mover, disk)[0]
    ok, why = hotadd.hotadd_possible(mover, dataclasses.replace(disk, uuid=None))
    assert not ok and "no disk UUID" in why
    other = hotadd.Mover(None, "mover", "esx01", frozenset({"ds2"}), "/dev/disk/by-id")
    ok, why = hotadd.hotadd_possible(other, disk)
    assert not ok and "does not mount datastore ds1" in why
    assert not hotadd.hotadd_possible(None, disk)[0]
    no_uuid = hotadd.Mover(None, "mover", "esx01", frozenset({"ds1"}), "/dev", enable_uuid=False)
    ok, why = hotadd.hotadd_possible(no_uuid, disk)
    assert not ok and "disk.EnableUUID" in why
    ok, why = hotadd.hotadd_possible(mover, disk, source_vm="mover")
    assert not ok and "the mover itself" in why


def test_hotadd_stays_within_the_movers_datacenter() -> None:
    """Datastore names are unique per datacenter only: DC2's ``ds1`` is not the mover's."""
    disk = VirtualDisk(2000, "Hard disk 1", 1 << 20, "[ds1] vm/vm.vmdk", "ds1", True, "persistent",
                    None, 1000, 0, uuid="6000C291-2345-6789-abcd-ef0123456789")
    mover = hotadd.Mover(None, "mover", "esx01", frozenset({"ds1"}), "/dev/disk/by-id",
                         datacenter="Region/DC1")
    assert hotadd.hotadd_possible(mover, disk, source_datacenter="Region/DC1")[0]
    ok, why = hotadd.hotadd_possible(mover, disk, source_vm="web01", source_datacenter="DC2")
    assert not ok and why == ("mover mover is in datacenter Region/DC1, the disk's VM in DC2: a "
                              "disk is hot-added within its datacenter only")
