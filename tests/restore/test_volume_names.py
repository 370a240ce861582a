"""How ``POINT:VOLUME/PATH`` names a volume: canonical, short form, disk, file-system label —
and a name that fits several volumes is refused naming only those (pure logic: the volume list
is given, nothing is read)."""

from __future__ import annotations

import pytest

from vmkeep.browse.errors import AmbiguousVolume, VolumeMissing, VolumeNotFound
from vmkeep.browse.point import PointImage, VolumeInfo


class _Point:
    kind = "vm"
    short_id = "18dd8062"


def _image(vols: list[VolumeInfo]) -> PointImage:
    img = PointImage(None, _Point())  # type: ignore[arg-type]
    img._volumes = vols
    return img


VOLS = [
    VolumeInfo("disk0-p1", 0, "p1", "ext", 230 << 20, 1 << 20, "rootfs"),
    VolumeInfo("disk0-p2", 0, "p2", "fat", 24 << 20, 231 << 20, "boot"),
    VolumeInfo("disk1-p1", 1, "p1", "ext", 62 << 20, 1 << 20, "data"),
    VolumeInfo("disk2-whole", 2, "whole", "xfs", 8 << 20, 0, "data"),
]


def test_canonical_short_disk_and_label_names() -> None:
    img = _image(VOLS)
    assert img.volume("disk0-p2").name == "disk0-p2"
    assert img.volume("p2").name == "disk0-p2"  # short form, unique
    assert img.volume("disk2").name == "disk2-whole"  # a disk holding one volume
    assert img.volume("rootfs").name == "disk0-p1"  # the label `ls` shows in brackets
    assert img.volume("boot").name == "disk0-p2"


def test_an_ambiguous_name_lists_only_what_it_could_mean() -> None:
    img = _image(VOLS)
    with pytest.raises(AmbiguousVolume) as short:
        img.volume("p1")
    assert short.value.get_message().endswith("use one of disk0-p1, disk1-p1")
    with pytest.raises(AmbiguousVolume) as label:
        img.volume("data")  # two volumes carry the label
    assert label.value.get_message().endswith("use one of disk1-p1, disk2-whole")
    with pytest.raises(VolumeNotFound) as missing:
        img.volume("home")
    assert "volumes: disk0-p1, disk0-p2, disk1-p1, disk2-whole" in missing.value.get_message()
    with pytest.raises(VolumeMissing) as none:  # ``POINT:/etc``: a file point's form
        img.volume("")
    assert "give a volume, POINT:VOLUME/PATH (volumes: disk0-p1" in none.value.get_message()
    assert none.value.exit_code == 14


def test_a_volume_name_wins_over_another_volume_label() -> None:
    vols = [VolumeInfo("disk0-p1", 0, "p1", "ext", 1, 0, "p2"),
            VolumeInfo("disk0-p2", 0, "p2", "ext", 1, 0, "")]
    assert _image(vols).volume("p2").name == "disk0-p2"


@pytest.mark.parametrize(("ref", "split"), [
    ("3f2a9c1b:p1/etc", ("3f2a9c1b", "p1/etc")),
    ("latest:p1", ("latest", "p1")),
    ("web01@latest", ("web01@latest", None)),
    ("web01@latest:p1/etc/hosts", ("web01@latest", "p1/etc/hosts")),
    ("web:01@latest:p1/etc", ("web:01@latest", "p1/etc")),  # a VM name holding ':'
    ("x@latest@latest:p1", ("x@latest@latest", "p1")),
    ("web:01@latest", ("web:01@latest", None)),
])
def test_a_reference_splits_after_the_point(ref: str, split: tuple[str, str | None]) -> None:
    from vmkeep.browse.point import split_ref
    from vmkeep.cli.restore_files import split_refs

    assert split_ref(ref) == split
    assert split_refs([ref]) == (split[0], [split[1] or "/"])
