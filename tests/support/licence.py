"""Trusting the development licence key, in-process only.

An installed vmkeep trusts exactly one key, the vendor's, built in as
:data:`vmkeep.licensing.store.VENDOR_PUBLIC_KEY_PEM`; nothing in the environment changes that.
Tests replace that constant inside their own process (:func:`trusted_dev_key`, the ``dev_licence``
fixture) or inside a CLI subprocess started through :mod:`tests.support.run_cli`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import vmkeep.licensing.store as store

KEYS = Path(__file__).resolve().parents[1] / "licensing" / "keys"
DEV_PUBLIC = KEYS / "dev_public.pem"
DEV_LICENCE = KEYS / "dev_licence.json"


def trust_dev_key() -> None:
    """From now on, this process trusts the development key instead of the vendor's."""
    store.VENDOR_PUBLIC_KEY_PEM = DEV_PUBLIC.read_bytes()


@contextlib.contextmanager
def trusted_dev_key() -> Iterator[None]:
    """Trust the development key inside the block."""
    saved = store.VENDOR_PUBLIC_KEY_PEM
    trust_dev_key()
    try:
        yield
    finally:
        store.VENDOR_PUBLIC_KEY_PEM = saved


def licensed_vcenter_env(mp: Any, lab: Any) -> dict[str, str]:
    """In ``mp`` (a ``pytest.MonkeyPatch``): the lab's vCenter credentials in the environment
    and the development licence in force; returns the flows' ``vcenter``/``cafile`` arguments."""
    mp.setenv("VMKEEP_VC_USER", lab.user)
    mp.setenv("VMKEEP_VC_PASSWORD", lab.password)
    mp.setattr(store, "VENDOR_PUBLIC_KEY_PEM", DEV_PUBLIC.read_bytes())
    mp.setenv("VMKEEP_LICENSE", str(DEV_LICENCE))
    return {"vcenter": lab.url, "cafile": lab.cafile}
