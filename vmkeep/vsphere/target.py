"""The vCenter/ESXi target: where vmkeep connects, how it logs in and how TLS is checked.

One frozen dataclass, :class:`VCenterTarget`, is that concept everywhere: the CLI's vCenter option
group hands it to a verb (:mod:`vmkeep.cli.vcenter_opts`), the job specs hold it as their
``vcenter`` field (:mod:`vmkeep.jobs.specs`), and :func:`vmkeep.tasks.vcenter.open_session` logs
in with it.

Light on purpose: the standard library only (no pyVmomi, pydantic or ``ssl``), because every
vCenter-facing verb module imports it when it registers — ``restore files`` too, a quick verb.
:meth:`VCenterTarget.tls` imports :mod:`vmkeep.vsphere.tls` when a session is opened.

Contracts:

* Never a password.  Credentials are named, never held: ``password_file`` (a path on the machine
  that runs the step), ``password_block`` (a Prefect Secret block name) or, with neither, the
  environment (``VMKEEP_VC_USER``/``VMKEEP_VC_PASSWORD``/``VMKEEP_VC_PASSWORD_FILE``), read by
  :func:`vmkeep.tasks.vcenter.resolve_credentials` where the step runs.  So a target may be a
  Prefect parameter, a log line or a ``repr``.
* TLS is verified unless ``insecure``; ``insecure`` with ``cafile`` or ``thumbprint`` is refused
  on construction (:class:`InvalidTarget`: a usage error, and a ``ValueError`` so that pydantic
  reports it as a validation error of the spec field).
* ``url`` is required but not checked for emptiness on construction: an empty ``url`` is the
  CLI's "no ``--vcenter`` given" (its verbs say which needs one).  Validated as a spec field, an
  empty ``url`` is refused.

Pydantic validates a field typed :class:`VCenterTarget` without this module importing it: it reads
each field's ``metadata`` (``min_length``, ``description``: constraints and the Prefect form's
help), the docstring (the schema's description) and ``__pydantic_config__`` (unknown keys refused,
instances re-validated), and runs ``__post_init__``.  A spec's JSON schema — a deployment's
parameter form — so keeps ``minLength`` and the descriptions (``tests/jobs/test_specs.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from vmkeep.errors import UsageError

if TYPE_CHECKING:
    from vmkeep.vsphere.tls import TLSOptions


class InvalidTarget(UsageError, ValueError):
    """{}"""


@dataclass(frozen=True)
class VCenterTarget:
    """Where and how to connect to vCenter/ESXi (TLS verified unless ``insecure``)."""

    __pydantic_config__: ClassVar[dict[str, Any]] = {
        "extra": "forbid",
        "revalidate_instances": "always",
    }

    url: str = field(
        metadata={"min_length": 1, "description": "vCenter/ESXi host[:port] or https URL"}
    )
    user: str | None = field(
        default=None, metadata={"description": "login user (else VMKEEP_VC_USER)"}
    )
    password_file: str | None = field(
        default=None, metadata={"description": "file holding the password"}
    )
    password_block: str | None = field(
        default=None, metadata={"description": "Prefect Secret block name"}
    )
    cafile: str | None = field(
        default=None, metadata={"description": "CA bundle (PEM); else the system trust store"}
    )
    thumbprint: str | None = field(
        default=None, metadata={"description": "SHA-256 fingerprint to pin"}
    )
    insecure: bool = field(
        default=False, metadata={"description": "verify nothing (only when asked)"}
    )

    def __post_init__(self) -> None:
        if self.insecure and (self.cafile or self.thumbprint):
            raise InvalidTarget("insecure cannot be combined with cafile or thumbprint")

    def tls(self) -> TLSOptions:
        """The TLS options of a session to this target."""
        from vmkeep.vsphere.tls import TLSOptions

        return TLSOptions(cafile=self.cafile, thumbprint=self.thumbprint, insecure=self.insecure)


#: the target's field names (the specs fold flat keywords of these into a target)
TARGET_FIELDS = tuple(f.name for f in fields(VCenterTarget))
