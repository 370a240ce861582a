"""Every disk reader of vmkeep is a :class:`vmkeep.storage.disk_source.DiskReader` and reads the
same bytes: the repository's, a local image's, a datastore mount's (the vSphere transports' reader
over a flat descriptor)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.storage.storage_helpers import backup
from vmkeep.disks.image import DiskImage
from vmkeep.disks.pread import ImageReader
from vmkeep.disks.vmdk.opener import open_disk
from vmkeep.storage.disk_source import ByteSource, DiskReader
from vmkeep.storage.reader import PointReader
from vmkeep.storage.repository import Repository
from vmkeep.vsphere.transports import ExtentReader, _Piece


def test_every_reader_is_a_disk_reader(tmp_path: Path) -> None:
    data = os.urandom(3 << 20) + bytes(1 << 20)
    image = tmp_path / "disk.img"
    image.write_bytes(data)
    repo = Repository.init(str(tmp_path / "repo"))
    point, _ = backup(repo, image)

    class FileSource:
        def __init__(self, path: Path) -> None:
            self.fd = os.open(path, os.O_RDONLY)

        def pread(self, offset: int, length: int) -> bytes:
            return os.pread(self.fd, length, offset)

        def close(self) -> None:
            os.close(self.fd)

    source = FileSource(image)
    assert isinstance(source, ByteSource)
    disk_image: DiskImage = open_disk(image, format="raw")
    readers: list[DiskReader] = [
        PointReader(repo, repo.load_point(point.id)),
        ImageReader(disk_image),
        ExtentReader("disk.img", [_Piece(0, len(data), source, 0)]),
    ]
    for reader in readers:
        assert isinstance(reader, DiskReader) and reader.random_access
        assert reader.size == len(data)
        assert reader.pread(len(data) - 100, 1 << 20) == data[-100:]  # short only at the end
        assert reader.pread(12345, 3 << 20) == data[12345 : 12345 + (3 << 20)]
        reader.close()  # the ExtentReader closes its source
