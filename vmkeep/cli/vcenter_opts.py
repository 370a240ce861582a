"""The vCenter option group every vCenter-facing verb shares (``backup vm``, ``sweep``,
``doctor``, ``instant-restore``, ``restore vm`` …), and the ``--datastore-mount`` option.

:func:`vcenter_options` adds ``--vcenter``, ``--user``, ``--password-file``,
``--password-block``, ``--cafile``, ``--thumbprint`` and ``--insecure`` to a command in place of
its ``vc`` parameter and hands the command the one vCenter target,
:class:`vmkeep.vsphere.target.VCenterTarget` — the object the specs hold as ``vcenter`` and
``open_session`` connects with (``--insecure`` with ``--cafile``/``--thumbprint`` is its usage
error).  ``vc`` without a default makes ``--vcenter`` required on the command line (click's
"Missing option"); with the default :data:`NO_VCENTER` it is optional: the target's ``url`` is
empty without ``--vcenter`` and :func:`need_vcenter` says which verb needs one.

Passwords never come from argv: ``--password-file`` or ``VMKEEP_VC_PASSWORD`` (or
``VMKEEP_VC_PASSWORD_FILE``), or a Prefect Secret block with ``--password-block``.

An empty ``--password-file`` or ``--cafile`` (an unset variable in a script) is a usage error; an
empty ``VMKEEP_VC_CAFILE`` is unset, as click takes every empty variable.

Imported by verb modules at registration: typer, the standard library, :mod:`vmkeep.cli.common`
and the light :mod:`vmkeep.vsphere.target` only.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from vmkeep.cli.common import given_location
from vmkeep.cli.option_groups import Option, option_group
from vmkeep.errors import UsageError
from vmkeep.vsphere.target import VCenterTarget

_VCENTER = typer.Option("--vcenter", envvar="VMKEEP_VCENTER", help="vCenter or ESXi URL/host.")
VCenterOpt = Annotated[str, _VCENTER]
OptionalVCenterOpt = Annotated[str | None, _VCENTER]
UserOpt = Annotated[
    str | None, typer.Option("--user", envvar="VMKEEP_VC_USER", help="vSphere user name.")
]
PasswordFileOpt = Annotated[
    str | None,
    typer.Option(
        "--password-file", parser=given_location, help="File holding the vSphere password."
    ),
]
PasswordBlockOpt = Annotated[
    str | None, typer.Option("--password-block", help="Prefect Secret block with the password.")
]
CafileOpt = Annotated[
    str | None,
    typer.Option(
        "--cafile", envvar="VMKEEP_VC_CAFILE", parser=given_location, help="CA bundle (PEM)."
    ),
]
ThumbprintOpt = Annotated[
    str | None,
    typer.Option(
        "--thumbprint",
        envvar="VMKEEP_VC_THUMBPRINT",
        help="Pin the server certificate's SHA-256 fingerprint.",
    ),
]
InsecureOpt = Annotated[
    bool, typer.Option("--insecure", help="Do not verify TLS (only when asked; never default).")
]
ResourcePoolOpt = Annotated[
    str | None,
    typer.Option(
        "--resource-pool",
        help="Resource pool or vApp, as a path in the host's cluster (Prod or Prod/DB; default: "
        "the cluster's root pool).",
    ),
]
NetworkMapOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--network",
        help="SOURCE=TARGET: NICs on network SOURCE join TARGET (repeatable; default: the "
        "same-named network).",
    ),
]
ConnectNetworksOpt = Annotated[
    bool,
    typer.Option(
        "--connect-networks",
        help="NICs connect at power-on (default: they start disconnected, so a copy never "
        "meets its original on the network).",
    ),
]
DiskFormatOpt = Annotated[
    str,
    typer.Option(
        "--disk-format",
        help="Disks as backed up (same), thin, thick (lazily zeroed) or eagerzeroedthick.",
    ),
]
DatastoreMountOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--datastore-mount", help="DATASTORE=PATH of a locally mounted datastore (repeatable)."
    ),
]

#: (parameter, declaration, default) of the vCenter option group after ``--vcenter``, in
#: --help order
_GROUP: list[tuple[str, Any, Any]] = [
    ("user", UserOpt, None),
    ("password_file", PasswordFileOpt, None),
    ("password_block", PasswordBlockOpt, None),
    ("cafile", CafileOpt, None),
    ("thumbprint", ThumbprintOpt, None),
    ("insecure", InsecureOpt, False),
]


#: the default of an optional ``vc`` parameter (never handed to a command: it gets the target of
#: its options, with an empty ``url`` when ``--vcenter`` was not given)
NO_VCENTER = VCenterTarget(url="")


def need_vcenter(vc: VCenterTarget, needed_by: str) -> VCenterTarget:
    """``vc`` when it names a vCenter; else ``UsageError`` naming ``needed_by``."""
    if not vc.url:
        raise UsageError(f"{needed_by} needs --vcenter (or VMKEEP_VCENTER)")
    return vc


def _vcenter_group(param: inspect.Parameter) -> list[Option]:
    vcenter = (
        ("vcenter", VCenterOpt, param.empty)
        if param.default is param.empty
        else ("vcenter", OptionalVCenterOpt, None)
    )
    return [vcenter, *_GROUP]


def _vcenter_target(values: dict[str, Any]) -> VCenterTarget:
    return VCenterTarget(values.pop("vcenter") or "", **values)


#: Give a command the vCenter option group where it declares ``vc: VCenterTarget``
#: (``--vcenter`` required when ``vc`` has no default).
vcenter_options = option_group("vc", _vcenter_group, _vcenter_target)


def parse_datastore_mounts(values: list[str] | None) -> dict[str, str]:
    """``--datastore-mount DATASTORE=PATH`` values → {datastore: local path}; ``UsageError`` for
    a value without a name, ``=`` or path."""
    return parse_pairs(values, "--datastore-mount", "DATASTORE=PATH")


def parse_network_map(values: list[str] | None) -> dict[str, str]:
    """``--network SOURCE=TARGET`` values → {source network: target network} (split at the
    first ``=``); ``UsageError`` for a value without both names, or a source given twice."""
    return parse_pairs(values, "--network", "SOURCE=TARGET")


def parse_pairs(values: list[str] | None, option: str, form: str) -> dict[str, str]:
    """Repeated ``option KEY=VALUE`` values → {key: value} (split at the first ``=``)."""
    pairs: dict[str, str] = {}
    for value in values or []:
        key, sep, val = value.partition("=")
        if not sep or not key or not val:
            raise UsageError(f"{option} wants {form}, not {value!r}")
        if key in pairs:
            raise UsageError(f"{option}: {key!r} given twice")
        pairs[key] = val
    return pairs


def need_disk_format(value: str) -> str:
    """``value`` if it is one of vSphere's disk formats (``--disk-format``), else a usage error."""
    from vmkeep.vsphere.vmconfig import DISK_FORMATS

    if value not in DISK_FORMATS:
        raise UsageError(f"--disk-format must be one of {', '.join(DISK_FORMATS)}")
    return value
