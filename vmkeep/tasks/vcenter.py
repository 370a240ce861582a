"""Connecting flows to vCenter/ESXi: where credentials come from and how TLS is configured.

A flow never receives a password as a parameter (Prefect records parameters).  Credentials come,
in this order, from a password file (``password_file`` with ``user``), a Prefect Secret block
(``password_block``, orchestrated runs only), or the environment (``VMKEEP_VC_USER`` with
``VMKEEP_VC_PASSWORD`` or ``VMKEEP_VC_PASSWORD_FILE``).  Guest credentials (for pre-freeze and
post-thaw scripts and restores into a guest) follow the same rules with ``VMKEEP_GUEST_USER`` /
``VMKEEP_GUEST_PASSWORD`` / ``VMKEEP_GUEST_PASSWORD_FILE``.

Where to connect is a :class:`vmkeep.vsphere.target.VCenterTarget` (the specs' ``vcenter``
field, the CLI's option group): it names the password's source, never the password.
"""

from __future__ import annotations

import sys
from typing import Any

from vmkeep.errors import InputError
from vmkeep.runtime.settings import api_configured
from vmkeep.settings import settings
from vmkeep.vsphere.connection import Session, connect
from vmkeep.vsphere.credentials import Credentials, from_env, from_file
from vmkeep.vsphere.target import VCenterTarget


def _from_block(block: str, user: str) -> Credentials:
    if "prefect" not in sys.modules and not api_configured():
        raise InputError(f"password block {block!r} needs a Prefect API (run with --prefect)")
    from prefect.blocks.system import Secret

    secret: Any = Secret.load(block)
    return Credentials(user, secret.get())


def resolve_credentials(
    user: str | None, password_file: str | None, password_block: str | None, prefix: str = "VC"
) -> Credentials:
    """Credentials by the module's rules; ``prefix`` is ``VC`` or ``GUEST``."""
    env = settings()
    env_user = getattr(env, f"{prefix.lower()}_user")
    if password_file:
        return from_file(user or env_user or "", password_file)
    if password_block:
        return _from_block(password_block, user or env_user or "")
    if prefix == "VC":
        return from_env(user=user)
    password, password_file = env.secret(f"{prefix.lower()}_password"), getattr(
        env, f"{prefix.lower()}_password_file")
    if password is None and password_file:
        return from_file(user or env_user or "", password_file)
    missing = [what for what, absent in (
        (f"a user (--guest-user or VMKEEP_{prefix}_USER)", not (user or env_user)),
        (f"a password (--guest-password-file, VMKEEP_{prefix}_PASSWORD_FILE or "
         f"VMKEEP_{prefix}_PASSWORD)", password is None),
    ) if absent]
    if missing:
        raise InputError(f"guest credentials: give {' and '.join(missing)}")
    assert password is not None
    return Credentials(user or env_user or "", password)


def open_session(target: VCenterTarget) -> Session:
    """Log in (TLS verified per ``target``); the caller closes the session."""
    creds = resolve_credentials(target.user, target.password_file, target.password_block)
    session = connect(target.url, creds, target.tls())
    session.start_keepalive()
    return session
