"""What a restore point's consistency really is: ``crash``, ``filesystem`` or ``application``.

A successful quiesced snapshot does not make a restore point application-consistent by itself:

* no quiescing (``--no-quiesce``, or a quiesce failure under ``--quiesce-policy
  crash-consistent``): ``crash`` — what a power cut leaves;
* quiesced Linux (VMware Tools freezes the file systems, ``fsfreeze``): ``filesystem``, unless a
  pre-freeze script ran successfully in the guest (it is what flushes the applications):
  ``application``;
* quiesced Windows: ``application`` only when VMware Tools can use VSS application writers —
  Tools running and ``disk.EnableUUID = TRUE`` in the VM's ``extraConfig`` (without it, VSS runs
  in file-system mode); otherwise ``filesystem``;
* other guests: ``filesystem`` when quiesced, or ``application`` with a successful pre-freeze
  script.

:func:`label` is pure; :func:`guest_facts` reads the needed facts in one property call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from vmkeep.vsphere.connection import Session

Label = Literal["crash", "filesystem", "application"]


@dataclass(frozen=True)
class GuestFacts:
    family: str  # "linux", "windows" or "other"
    tools_running: bool
    enable_uuid: bool  # extraConfig disk.EnableUUID = TRUE


def guest_facts(session: Session, vm: Any) -> GuestFacts:
    props = session.props(
        vm,
        ["guest.guestFamily", "config.guestId", "guest.toolsRunningStatus", "config.extraConfig"],
    )
    family = str(props.get("guest.guestFamily") or "").lower()
    guest_id = str(props.get("config.guestId") or "").lower()
    if "windows" in family or guest_id.startswith("win"):
        kind = "windows"
    elif "linux" in family or any(
        k in guest_id
        for k in ("linux", "ubuntu", "rhel", "centos", "debian", "sles", "oracle", "rocky")
    ):
        kind = "linux"
    else:
        kind = "other"
    extra = {o.key.lower(): str(o.value) for o in props.get("config.extraConfig") or []}
    return GuestFacts(
        kind,
        props.get("guest.toolsRunningStatus") == "guestToolsRunning",
        extra.get("disk.enableuuid", "").strip().lower() in ("true", "1", "yes"),
    )


def label(quiesced: bool, facts: GuestFacts | None, pre_freeze_ok: bool) -> tuple[Label, str]:
    """The consistency label and the reason, from what actually happened (pure)."""
    if not quiesced:
        return "crash", "snapshot not quiesced"
    if facts is None:
        return "filesystem", "quiesced (guest unknown)"
    if facts.family == "windows":
        if facts.tools_running and facts.enable_uuid:
            return "application", "quiesced with VSS application writers (disk.EnableUUID)"
        return "filesystem", "quiesced; VSS application quiescing needs disk.EnableUUID = TRUE"
    if pre_freeze_ok:
        return "application", "quiesced after a successful pre-freeze script"
    return "filesystem", f"quiesced {facts.family} guest (file systems frozen, no application hook)"
