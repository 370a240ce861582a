"""The parts of a VM's configuration beyond hardware counts: firmware and secure boot, vTPM
presence, ``extraConfig``, CPU/memory reservations, limits and shares (``vmkeep.vmconfig``
version 2 keys; see :mod:`vmkeep.vsphere.vmconfig`).

:func:`capture_settings` turns collector properties into JSON-safe data; :func:`apply_settings`
puts them on a ``ConfigSpec`` for a restore and returns warnings for what cannot be restored.

Identity: by default a restore gets a **new** identity — ``extraConfig`` keys that name the old
VM (:data:`IDENTITY_KEYS`, :data:`IDENTITY_PREFIXES`) are dropped and vSphere assigns new BIOS and
instance UUIDs and MACs.  ``keep_identity`` (disaster recovery: the original is gone) sets
``uuid``/``instanceUuid`` from the backup; MACs are handled with the NICs in ``vmconfig``.

vTPM: only its *presence* is restored (a new, empty vTPM).  Its secrets (keys sealed by the guest,
e.g. BitLocker) are encrypted by the vCenter key provider and are **not** in any backup; without
that key provider they cannot be restored, and a guest relying on them needs its recovery key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

#: extraConfig keys that identify the old VM or its files and must be new on a restored copy
IDENTITY_KEYS = frozenset({
    "uuid.bios", "uuid.location", "vc.uuid", "nvram", "sched.swap.derivedName",
    "migrate.hostLog", "migrate.hostLogState", "migrate.migrationId", "checkpoint.vmState",
    "vmci0.id", "svga.guestBackedPrimaryAware", "monitor.phys_bits_used", "softPowerOff",
    "toolsInstallManager.updateCounter", "guestinfo.vmware.components.available",
})
IDENTITY_PREFIXES = ("ethernet", "scsi", "sata", "nvme", "ide", "sched.swap.", "vmkeep.",
                     "guestinfo.vmware.", "vmware.log.", "ctkEnabled", "hostCPUID.",
                     "userCPUID.", "guestCPUID.")
#: extraConfig keys kept even though a prefix above would drop them
KEEP_KEYS = frozenset({"disk.EnableUUID"})

SETTINGS_PROPS = [
    "config.bootOptions", "config.extraConfig", "config.cpuAllocation",
    "config.memoryAllocation", "config.hardware.device", "config.firmware",
]


def _alloc(a: Any) -> dict[str, Any] | None:
    if a is None:
        return None
    shares = getattr(a, "shares", None)
    return {
        "reservation": getattr(a, "reservation", None),
        "limit": getattr(a, "limit", None),
        "expandable": getattr(a, "expandableReservation", None),
        "shares_level": str(shares.level) if shares is not None else None,
        "shares": getattr(shares, "shares", None) if shares is not None else None,
    }


def capture_settings(props: Mapping[str, Any]) -> dict[str, Any]:
    """JSON-safe settings from the collector ``props`` named in :data:`SETTINGS_PROPS`."""
    boot = props.get("config.bootOptions")
    devices = props.get("config.hardware.device") or []
    return {
        "secure_boot": bool(getattr(boot, "efiSecureBootEnabled", False)) if boot else False,
        "boot_delay_ms": getattr(boot, "bootDelay", None) if boot else None,
        "vtpm": any(type(d).__name__.endswith("VirtualTPM") for d in devices),
        "extra_config": {
            str(o.key): str(o.value) for o in (props.get("config.extraConfig") or [])
            if getattr(o, "key", None) is not None
        },
        "cpu_allocation": _alloc(props.get("config.cpuAllocation")),
        "memory_allocation": _alloc(props.get("config.memoryAllocation")),
    }


def restorable_extra_config(extra: Mapping[str, str]) -> dict[str, str]:
    """``extra`` without the identity keys (see the module docstring)."""
    return {
        k: v for k, v in extra.items()
        if k in KEEP_KEYS or (k not in IDENTITY_KEYS and not k.startswith(IDENTITY_PREFIXES))
    }


def _allocation_spec(a: Mapping[str, Any] | None) -> Any:
    from pyVmomi import vim

    if not a:
        return None
    out: Any = vim.ResourceAllocationInfo()
    if a.get("reservation") is not None:
        out.reservation = int(a["reservation"])
    if a.get("limit") is not None:
        out.limit = int(a["limit"])
    if a.get("shares_level"):
        out.shares = vim.SharesInfo(
            level=a["shares_level"], shares=int(a.get("shares") or 0)
        )
    return out


def apply_settings(
    spec: Any, config: Mapping[str, Any], *, keep_identity: bool, marker: Mapping[str, str]
) -> list[str]:
    """Put the saved settings of ``config`` on ``spec`` (a ``vim.vm.ConfigSpec``); ``marker``
    extraConfig entries are added (vmkeep's half-restored mark).  Returns warnings."""
    from pyVmomi import vim

    warnings: list[str] = []
    if config.get("firmware"):
        spec.firmware = config["firmware"]
    if config.get("secure_boot") or config.get("boot_delay_ms"):
        spec.bootOptions = vim.vm.BootOptions(
            efiSecureBootEnabled=bool(config.get("secure_boot")),
            bootDelay=int(config.get("boot_delay_ms") or 0),
        )
    for key in ("cpu_allocation", "memory_allocation"):
        alloc = _allocation_spec(config.get(key))
        if alloc is not None:
            setattr(spec, "cpuAllocation" if key.startswith("cpu") else "memoryAllocation", alloc)
    extra = restorable_extra_config(config.get("extra_config") or {})
    extra.update(marker)
    spec.extraConfig = [vim.option.OptionValue(key=k, value=v) for k, v in sorted(extra.items())]
    if keep_identity:
        if config.get("bios_uuid"):
            spec.uuid = config["bios_uuid"]
        if config.get("instance_uuid"):
            spec.instanceUuid = config["instance_uuid"]
    if config.get("vtpm"):
        dev = vim.vm.device
        tpm = dev.VirtualDeviceSpec(
            operation=dev.VirtualDeviceSpec.Operation.add, device=dev.VirtualTPM(key=-400),
        )
        spec.deviceChange = [*(spec.deviceChange or []), tpm]
        warnings.append(
            "vTPM: a new, empty vTPM was added; the original vTPM's secrets are encrypted by the "
            "vCenter key provider and cannot be restored without it"
        )
    return warnings
