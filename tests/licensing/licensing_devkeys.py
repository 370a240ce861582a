"""The development licence key pair and helpers to mint licences for tests and the demo.

The key pair in ``keys/`` is for development only: an installed vmkeep never trusts it (its
private half is public).  Tests trust it in-process (the ``dev_licence`` / ``dev_trusted``
fixtures) or in a CLI subprocess started as ``python -m tests.support.run_cli``.
``keys/dev_licence.json`` is a generous licence (valid to 2099) signed with it::

    VMKEEP_LICENSE=tests/licensing/keys/dev_licence.json uv run python -m tests.support.run_cli …

Run this file to mint another one::

    uv run python tests/licensing/licensing_devkeys.py OUT.json --customer Demo \\
        --count backup_client=4 --count esx_server_client_5seat=1 --expires 2030-12-31
"""

from __future__ import annotations

import argparse
import uuid
from datetime import date
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from vmkeep.licensing.licence_file import Licence, sign_licence
from vmkeep.licensing.model import Requirements

KEYS = Path(__file__).resolve().parent / "keys"
DEV_PRIVATE = KEYS / "dev_private.pem"
DEV_PUBLIC = KEYS / "dev_public.pem"
DEV_LICENCE = KEYS / "dev_licence.json"


def dev_private_key() -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(DEV_PRIVATE.read_bytes(), password=None)
    assert isinstance(key, Ed25519PrivateKey)
    return key


def make_licence(
    customer: str = "ACME Test GmbH",
    issued: date = date(2025, 1, 1),
    expires: date = date(2099, 12, 31),
    licence_id: str | None = None,
    **counts: int,
) -> Licence:
    return Licence(
        licence_id=licence_id or f"dev-{uuid.uuid4()}",
        customer=customer,
        issued=issued,
        expires=expires,
        counts=Requirements(**counts),
    )


def licence_text(key: Ed25519PrivateKey | None = None, **kwargs: Any) -> str:
    return sign_licence(make_licence(**kwargs), key or dev_private_key())


def write_licence(path: Path, key: Ed25519PrivateKey | None = None, **kwargs: Any) -> Path:
    path.write_text(licence_text(key, **kwargs), encoding="utf-8")
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--customer", default="vmkeep development")
    ap.add_argument("--licence-id", default=None)
    ap.add_argument("--issued", type=date.fromisoformat, default=date(2025, 1, 1))
    ap.add_argument("--expires", type=date.fromisoformat, default=date(2099, 12, 31))
    ap.add_argument("--count", action="append", default=[], metavar="SKU=N")
    args = ap.parse_args()
    counts = {k: int(v) for k, v in (c.split("=", 1) for c in args.count)}
    write_licence(
        args.out,
        customer=args.customer,
        licence_id=args.licence_id,
        issued=args.issued,
        expires=args.expires,
        **counts,
    )


if __name__ == "__main__":
    main()
