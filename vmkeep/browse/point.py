"""A restore point of kind ``image`` or ``vm`` opened for browsing: disks, volumes, file systems.

Contract:

- ``PointImage(repo, point)`` opens nothing until asked.  ``reader(n)`` is a
  :class:`~vmkeep.storage.reader.PointReader` over disk ``n``, used as a *raw* disk (backed-up disks
  are raw images: guest bytes that look like a VMDK descriptor are never interpreted as one).
- ``volumes()`` lists every disk's volumes as :class:`VolumeInfo`; the canonical name is
  ``disk<N>-<volume>`` with LVM's ``vg/lv`` written ``vg-lv`` (the FUSE mount uses the same
  names).  ``volume(name)`` also accepts the short form (``p1``, ``vg0-lvext``, ``whole``) when it
  names one volume of the point, ``disk<N>`` / ``<N>`` for a disk holding a single volume, and
  a file-system label (``ls`` shows it in brackets) that one volume of the point carries.  An
  ambiguous name is refused, naming the volumes it could mean.
- ``filesystem(name)`` opens (once) the volume's file system through :mod:`vmkeep.disks`.
- ``fetches`` counts chunks fetched from the repository so far, over all disks.
- Not thread-safe (the volume streams share each disk reader's position).

:func:`split_ref` splits ``POINT:REST`` (after ``NAME@latest``, else at the first ``:``);
:func:`split_volume_path` splits ``VOLUME/PATH`` at the first ``/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from vmkeep.browse.errors import AmbiguousVolume, VolumeMissing, VolumeNotFound
from vmkeep.disks import FileSystem, list_disks_volumes, open_filesystem
from vmkeep.disks.fs import DRIVERS
from vmkeep.point_paths import normalize
from vmkeep.storage.errors import WrongPointKind
from vmkeep.storage.manifest import RestorePoint
from vmkeep.storage.reader import PointReader
from vmkeep.storage.repository import Repository

IMAGE_KINDS = ("image", "vm")
CACHE_BYTES = 128 << 20  # decoded chunks kept per disk reader


@dataclass(frozen=True)
class VolumeInfo:
    """One volume of one disk of a restore point."""

    name: str  # canonical: disk0-p1
    disk: int
    volume: str  # as vmkeep.disks names it: p1, vg0/lvext, whole
    fs: str | None
    size: int
    offset: int | None
    label: str = ""

    @property
    def short(self) -> str:
        return self.volume.replace("/", "-")

    @property
    def browsable(self) -> bool:
        return self.fs in DRIVERS

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fs": self.fs,
            "size": self.size,
            "disk": self.disk,
            "volume": self.volume,
            "offset": self.offset,
            "label": self.label,
            "browsable": self.browsable,
        }


def split_ref(ref: str) -> tuple[str, str | None]:
    """``POINT:REST`` -> (POINT, REST); a bare ``POINT`` -> (POINT, None).  ``NAME@latest:REST``
    splits after ``@latest``, so a name holding ``:`` (a VM called ``web:01``) still works;
    otherwise at the first ``:`` (ids and ``latest`` have none)."""
    marker = "@latest:"
    at = ref.find(marker)
    if at >= 0:
        return ref[: at + len(marker) - 1], ref[at + len(marker):]
    if ref.endswith("@latest"):
        return ref, None
    point, sep, rest = ref.partition(":")
    return point, (rest if sep else None)


def split_volume_path(rest: str) -> tuple[str, str]:
    """``VOLUME/PATH`` -> (VOLUME, /PATH); ``VOLUME`` -> (VOLUME, /); the path as every
    command reads one (:func:`vmkeep.point_paths.normalize`: ``..`` is a usage error)."""
    volume, _, path = rest.lstrip("/").partition("/")
    return volume, normalize(path)


class PointImage:
    """See the module docstring."""

    def __init__(self, repo: Repository, point: RestorePoint) -> None:
        if point.kind not in IMAGE_KINDS:
            raise WrongPointKind(point.short_id, point.kind, "not a disk image")
        self.repo, self.point = repo, point
        self._readers: dict[int, PointReader] = {}
        self._volumes: list[VolumeInfo] | None = None
        self._openers: dict[str, Any] = {}
        self._fs: dict[str, FileSystem] = {}
        self.warnings: list[str] = []

    @classmethod
    def open(cls, repo: Repository, ref: str) -> PointImage:
        return cls(repo, repo.load_point(ref))

    @property
    def disk_numbers(self) -> list[int]:
        return [d.index for d in self.point.disks]

    def reader(self, disk: int) -> PointReader:
        if disk not in self._readers:
            chunk = max(1, self.repo.config.image_chunk_size)
            self._readers[disk] = PointReader(
                self.repo, self.point, disk, cache_chunks=max(32, CACHE_BYTES // chunk)
            )
        return self._readers[disk]

    @property
    def fetches(self) -> int:
        return sum(r.cache.fetches for r in self._readers.values())

    def volumes(self) -> list[VolumeInfo]:
        if self._volumes is None:
            out: list[VolumeInfo] = []
            lists, errors = list_disks_volumes(
                (f"disk{disk}", cast(BinaryIO, self.reader(disk))) for disk in self.disk_numbers)
            self.warnings.extend(errors)
            for name, found in lists.items():
                disk = int(name.removeprefix("disk"))
                self.warnings.extend(found.warnings)
                for vol in found:
                    info = VolumeInfo(
                        f"{name}-{vol.name.replace('/', '-')}",
                        disk,
                        vol.name,
                        vol.fs,
                        vol.size,
                        vol.offset,
                        vol.label,
                    )
                    self._openers[info.name] = vol.open
                    out.append(info)
            self._volumes = out
        return self._volumes

    def volume(self, name: str) -> VolumeInfo:
        """The volume called ``name`` (canonical or short form, see the module docstring)."""
        vols = self.volumes()
        exact = [v for v in vols if v.name == name]
        if exact:
            return exact[0]
        short = [v for v in vols if name in (v.short, v.volume)]
        if not short and name.removeprefix("disk").isdigit():
            disk = int(name.removeprefix("disk"))
            short = [v for v in vols if v.disk == disk and v.fs != "lvm2"]
        if not short:
            short = [v for v in vols if v.label and v.label == name]
        if len(short) == 1:
            return short[0]
        if short:
            raise AmbiguousVolume(name, self.point.short_id, ", ".join(v.name for v in short))
        names = ", ".join(v.name for v in vols) or "none"
        if not name:  # ``POINT:/etc`` of an image point: a file point's form
            raise VolumeMissing(self.point.short_id, names)
        raise VolumeNotFound(name, self.point.short_id, names)

    def filesystem(self, name: str) -> FileSystem:
        vol = self.volume(name)
        if vol.name not in self._fs:
            self._fs[vol.name] = open_filesystem(self._openers[vol.name](), vol.name, vol.fs)
        return self._fs[vol.name]

    def open_volume_stream(self, name: str) -> Any:
        """A new seekable byte stream over volume ``name`` (canonical name), for raw access."""
        vol = self.volume(name)
        return self._openers[vol.name]()

    def close(self) -> None:
        for fs in self._fs.values():
            fs.close()
        for reader in self._readers.values():
            reader.close()
        self._fs.clear()
        self._readers.clear()

    def __enter__(self) -> PointImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
