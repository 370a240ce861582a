"""The lab's inventory: which VMs exist, on which host and datastore, with which disks.

:func:`layout` builds (or reuses cached) disk images, lays them out in the datastores under
``state/datastores/<name>/`` as VMFS-style files and returns the spec's ``datastores`` and
``vms`` entries for the Go program (see ``esxsim/spec.go``).

Inventory (hosts are made by the Go program: cluster ``cluster01`` with ``esx01.lab.local`` and
``esx02.lab.local``, standalone ``esx03.lab.local``; datastores ``datastore1``, ``datastore2``
mounted on every host; ``datastore1`` and ``datastore2`` are VMFS5, ``datastore3`` VMFS6):

* ``linux01`` — otherLinux64Guest, 2 disks: 256 MiB thin (GPT + ext4 system) and 64 MiB thick
  (GPT + ext4 data); a vmxnet3 adapter on ``VM Network`` (the standard port group every host has);
* ``win01`` — windows2019srv_64Guest, 256 MiB thin (MBR: NTFS ``C:`` + FAT ``D:``); an e1000e
  adapter on ``dvpg-prod`` (distributed switch ``dvs-prod``, on every host);
* ``db01`` — on the standalone host and datastore2: 32 MiB ext4 plus a 16 MiB independent disk
  (backups must skip it); vmxnet3 adapters on ``Backup LAN`` (a standard port group only
  ``esx03`` has) and ``VM Network``;
* ``tmpl-linux`` — a template;
* ``old01`` — virtual hardware version 4 (``capability.changeTrackingSupported`` false: CBT
  cannot be enabled), 8 MiB ext4;
* ``cbt01`` — 32 MiB thin ext4, for the CBT and CBT-audit tests (nothing else writes to it);
* ``nfs01`` — on the NFS datastore ``nfs01`` (where CBT's ``changeId="*"`` answers one extent
  covering the whole disk), 16 MiB thin ext4;
* ``app01`` — on the VMFS6 datastore ``datastore3`` (snapshot deltas are SEsparse), 2 disks:
  32 MiB thin ext4 and 16 MiB thin raw data; for the delta-format tests (nothing else writes
  to it);
* ``legacy01`` — on the VMFS5 datastore ``datastore2`` (snapshot deltas are COWD with 512-byte
  grains), 16 MiB thin ext4; for the delta-format tests (nothing else writes to it);
* ``vsan01`` — on the vSAN datastore ``vsanDatastore`` (``summary.type`` ``vsan``; disks are
  ``vsan://`` objects, no ``-flat.vmdk``; deltas ``VSANSPARSE``), 16 MiB thin ext4;
* ``vvol01`` — on the vVol datastore ``vvolDatastore`` (``VVOL``; ``vvol://`` objects), 16 MiB
  thin ext4 (both: :mod:`vmkeep.lab.objects`);
* ``small01``… — ``n_small`` tiny Linux VMs for concurrency tests;
* ``vmkeep-mover01`` — the data-mover VM for hot-add (on ``esx01``, 8 MiB system disk): the lab
  exposes disks hot-added to it as files under its device folder (``movers`` in the ready
  document; see ``esxsim/hotadd.go``);
* ``hot01`` — on ``esx02`` and ``datastore1`` (which the mover's host sees), 16 MiB ext4 plus an
  8 MiB raw data disk, for the hot-add tests (nothing else writes to it);
* ``local01`` — on ``esx03-local``, a datastore only ``esx03.lab.local`` mounts (the mover's host
  cannot see it: hot-add of its disks is refused), 8 MiB thin ext4.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vmkeep.lab.images import build_image
from vmkeep.lab.objects import SCHEMES, to_object
from vmkeep.lab.vmdk import write_base_disk

MiB = 1 << 20
HOSTS = ("esx01.lab.local", "esx02.lab.local", "esx03.lab.local")
DATASTORES = ("datastore1", "datastore2")
#: every datastore of the lab and its type (VMFS unless named here)
DATASTORE_TYPES = {
    "datastore1": "VMFS",
    "datastore2": "VMFS",
    "datastore3": "VMFS",
    "nfs01": "NFS",
    "vsanDatastore": "vsan",
    "vvolDatastore": "VVOL",
    "esx03-local": "VMFS",
}
#: VMFS major version of each VMFS datastore: 5 → COWD snapshot deltas (512-byte grains),
#: 6 → SEsparse deltas (as ESXi decides)
VMFS_VERSIONS = {"datastore1": 5, "datastore2": 5, "datastore3": 6, "esx03-local": 5}
#: datastores mounted on some hosts only (the others are mounted on every host)
DATASTORE_HOSTS = {"esx03-local": [HOSTS[2]]}
#: the lab's data-mover VM (hot-add)
MOVER = "vmkeep-mover01"


def _vms(n_small: int) -> list[dict[str, Any]]:
    vms: list[dict[str, Any]] = [
        {
            "name": "linux01",
            "guest": "linux",
            "guest_id": "otherLinux64Guest",
            "host": HOSTS[0],
            "datastore": "datastore1",
            "power_on": True,
            "disks": [
                {"recipe": "linux-system", "size": 256 * MiB, "thin": True, "mount": "/"},
                {"recipe": "linux-data", "size": 64 * MiB, "thin": False, "mount": "/data"},
            ],
            "nics": [{"type": "vmxnet3", "network": "VM Network"}],
        },
        {
            "name": "win01",
            "guest": "windows",
            "guest_id": "windows2019srv_64Guest",
            "host": HOSTS[1],
            "datastore": "datastore1",
            "power_on": True,
            "disks": [{"recipe": "windows-system", "size": 256 * MiB, "thin": True}],
            "nics": [{"type": "e1000e", "network": "dvpg-prod"}],
        },
        {
            "name": "db01",
            "guest": "linux",
            "guest_id": "otherLinux64Guest",
            "host": HOSTS[2],
            "datastore": "datastore2",
            "power_on": True,
            "disks": [
                {"recipe": "tiny-linux", "size": 32 * MiB, "thin": True, "mount": "/"},
                {"recipe": "raw-data", "size": 16 * MiB, "thin": True, "independent": True},
            ],
            "nics": [
                {"type": "vmxnet3", "network": "Backup LAN"},
                {"type": "vmxnet3", "network": "VM Network"},
            ],
        },
        {
            "name": "tmpl-linux",
            "guest": "linux",
            "guest_id": "otherLinux64Guest",
            "host": HOSTS[0],
            "datastore": "datastore2",
            "template": True,
            "disks": [{"recipe": "tiny-linux", "size": 16 * MiB, "thin": True, "mount": "/"}],
        },
        {
            "name": "old01",
            "guest": "linux",
            "guest_id": "otherLinux64Guest",
            "host": HOSTS[1],
            "datastore": "datastore2",
            "power_on": True,
            "hw_version": 4,
            "disks": [{"recipe": "tiny-linux", "size": 8 * MiB, "thin": True, "mount": "/"}],
        },
        {
            "name": "cbt01",
            "guest": "linux",
            "guest_id": "otherLinux64Guest",
            "host": HOSTS[0],
            "datastore": "datastore1",
            "power_on": True,
            "disks": [{"recipe": "tiny-linux", "size": 32 * MiB, "thin": True, "mount": "/"}],
        },
        {
            "name": "nfs01",
            "guest": "linux",
            "guest_id": "otherLinux64Guest",
            "host": HOSTS[0],
            "datastore": "nfs01",
            "power_on": True,
            "disks": [{"recipe": "tiny-linux", "size": 16 * MiB, "thin": True, "mount": "/"}],
        },
        {
            "name": MOVER,
            "guest": "linux",
            "guest_id": "otherLinux64Guest",
            "host": HOSTS[0],
            "datastore": "datastore1",
            "power_on": True,
            "mover": True,
            "disks": [{"recipe": "tiny-linux", "size": 8 * MiB, "thin": True, "mount": "/"}],
        },
        {
            "name": "hot01",
            "guest": "linux",
            "guest_id": "otherLinux64Guest",
            "host": HOSTS[1],
            "datastore": "datastore1",
            "power_on": True,
            "disks": [
                {"recipe": "tiny-linux", "size": 16 * MiB, "thin": True, "mount": "/"},
                {"recipe": "raw-data", "size": 8 * MiB, "thin": True},
            ],
        },
        {
            "name": "local01",
            "guest": "linux",
            "guest_id": "otherLinux64Guest",
            "host": HOSTS[2],
            "datastore": "esx03-local",
            "power_on": True,
            "disks": [{"recipe": "tiny-linux", "size": 8 * MiB, "thin": True, "mount": "/"}],
        },
    ]
    for i in range(1, n_small + 1):
        vms.append(
            {
                "name": f"small{i:02d}",
                "guest": "linux",
                "guest_id": "otherLinux64Guest",
                "host": HOSTS[i % 2],
                "datastore": DATASTORES[i % 2],
                "power_on": True,
                "disks": [{"recipe": "tiny-linux", "size": 8 * MiB, "thin": True, "mount": "/"}],
            }
        )
    # after the small VMs: their seeds (and cached images) stay what they were
    vms += [
        {
            "name": "app01",
            "guest": "linux",
            "guest_id": "otherLinux64Guest",
            "host": HOSTS[1],
            "datastore": "datastore3",
            "power_on": True,
            "disks": [
                {"recipe": "tiny-linux", "size": 32 * MiB, "thin": True, "mount": "/"},
                {"recipe": "raw-data", "size": 16 * MiB, "thin": True},
            ],
        },
        {
            "name": "legacy01",
            "guest": "linux",
            "guest_id": "otherLinux64Guest",
            "host": HOSTS[0],
            "datastore": "datastore2",
            "power_on": True,
            "disks": [{"recipe": "tiny-linux", "size": 16 * MiB, "thin": True, "mount": "/"}],
        },
    ]
    for name, ds in (("vsan01", "vsanDatastore"), ("vvol01", "vvolDatastore")):
        vms.append(
            {
                "name": name,
                "guest": "linux",
                "guest_id": "otherLinux64Guest",
                "host": HOSTS[1],
                "datastore": ds,
                "power_on": True,
                "disks": [{"recipe": "tiny-linux", "size": 16 * MiB, "thin": True, "mount": "/"}],
            }
        )
    return vms


def layout(state: Path, n_small: int = 4) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Lay out every VM's disks in ``state/datastores``; return the spec's (datastores, vms)."""
    ds_dirs = {name: state / "datastores" / name for name in DATASTORE_TYPES}
    for d in ds_dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    out_vms = []
    for seed, vm in enumerate(_vms(n_small), start=1):
        disks, filesystems, files = [], [], {}
        for i, disk in enumerate(vm["disks"]):
            img = build_image(disk["recipe"], disk["size"], seed=seed * 10 + i, hostname=vm["name"])
            stem = vm["name"] if i == 0 else f"{vm['name']}_{i}"
            rel = f"{vm['name']}/{stem}.vmdk"
            write_base_disk(
                ds_dirs[vm["datastore"]] / rel, img.path, disk["size"], disk["thin"], seed * 10 + i
            )
            if DATASTORE_TYPES[vm["datastore"]] in SCHEMES:
                to_object(ds_dirs[vm["datastore"]] / rel, _object_dir(state, vm["datastore"]),
                          DATASTORE_TYPES[vm["datastore"]], seed * 10 + i)
            disks.append(
                {
                    "datastore": vm["datastore"],
                    "path": rel,
                    "capacity": disk["size"],
                    "thin": disk["thin"],
                    "independent": disk.get("independent", False),
                }
            )
            for fs in img.filesystems:
                mount = fs.mount
                if vm["guest"] == "linux" and "mount" in disk:
                    mount = disk["mount"]
                filesystems.append(
                    {
                        "disk": i,
                        "offset": fs.offset,
                        "size": fs.size,
                        "type": fs.type,
                        "mount": mount,
                    }
                )
            if i == 0:
                files.update(img.files)
        out_vms.append(
            {
                "name": vm["name"],
                "guest": vm["guest"],
                "guest_id": vm["guest_id"],
                "host": vm["host"],
                "datastore": vm["datastore"],
                "template": vm.get("template", False),
                "hw_version": vm.get("hw_version", 0),
                "power_on": vm.get("power_on", False),
                "mover": vm.get("mover", False),
                "disks": disks,
                "nics": vm.get("nics", []),
                "filesystems": filesystems,
                "files": files,
            }
        )
    datastores: list[dict[str, Any]] = []
    for n, d in ds_dirs.items():
        entry: dict[str, Any] = {
            "name": n, "dir": str(d), "type": DATASTORE_TYPES[n],
            "vmfs_version": VMFS_VERSIONS.get(n, 0),
        }
        if DATASTORE_TYPES[n] in SCHEMES:
            entry["object_dir"] = str(_object_dir(state, n))
        if n in DATASTORE_HOSTS:
            entry["hosts"] = DATASTORE_HOSTS[n]
        datastores.append(entry)
    return datastores, out_vms


def _object_dir(state: Path, datastore: str) -> Path:
    """The object store of a vSAN/vVol datastore: beside, never inside, its directory."""
    return state / "datastores" / f".objects-{datastore}"
