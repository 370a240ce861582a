"""Signed licence files (format ``vmkeep-licence`` version 1).

A licence file is one UTF-8 JSON object (at most 64 KiB, no duplicate keys anywhere)::

    {
      "format": "vmkeep-licence",
      "version": 1,
      "key_id": "c7815d230c2532f1",
      "payload": {
        "licence_id": "2f0c…",                 # non-empty string, the vendor's reference
        "customer": "ACME GmbH",               # non-empty string
        "issued": "2025-01-31",                # ISO date
        "expires": "2026-01-31",               # ISO date, valid through the end of that day, UTC
        "counts": {"backup_client": 11, "esx_server_client_5seat": 2, "esx_5seat_addon": 1,
                   "san_remote_device": 0, "autoloader_slot": 0}
      },
      "signature": "<base64 of the 64-byte Ed25519 signature>"
    }

* ``payload`` holds exactly those five keys; ``counts`` holds SKU values (see
  :class:`vmkeep.licensing.model.Sku`) mapped to integers >= 0, a missing SKU meaning 0; unknown
  SKUs or keys are rejected (a new field means a new ``version``).
* The signature is Ed25519 over ``b"vmkeep-licence\\x00v1\\x00" + canonical(payload)`` where
  ``canonical`` is ``json.dumps(payload, sort_keys=True, separators=(",", ":"),
  ensure_ascii=False)`` encoded as UTF-8 (the payload holds only strings, integers and objects,
  so this is unambiguous).  The envelope's other fields are not signed; ``version`` is bound by
  the prefix.
* ``key_id`` is the first 8 bytes, hex, of SHA-256 over the raw 32-byte public key; it only lets the
  verifier say *which* key a file was signed with.  Trust comes from the signature alone.

Verification order: size and JSON syntax → envelope → key id (wrong key) → signature (tampered) →
payload schema.  Validity in time (issued/expires) is not a parsing question: :meth:`Licence.
problem_at` answers it, so an expired licence can still be shown.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any

from vmkeep.licensing.errors import (
    LicenceError,
    LicenceExpired,
    LicenceInvalid,
    LicenceNotYetValid,
    LicenceTampered,
    LicenceWrongKey,
    PublicKeyError,
)
from vmkeep.licensing.model import Requirements, Sku

if TYPE_CHECKING:  # cryptography is imported where a key is used: a run without a licence
    # file (the community tier) never loads it (~30 modules of start-up for every backup)
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

FORMAT = "vmkeep-licence"
VERSION = 1
MAX_SIZE = 64 * 1024
SIGNING_PREFIX = b"vmkeep-licence\x00v1\x00"
_ENVELOPE_KEYS = {"format", "version", "key_id", "payload", "signature"}
_PAYLOAD_KEYS = {"licence_id", "customer", "issued", "expires", "counts"}


@dataclass(frozen=True)
class Licence:
    """A verified licence (only :func:`parse_licence` and tests build these)."""

    licence_id: str
    customer: str
    issued: date
    expires: date
    counts: Requirements
    key_id: str = ""

    @property
    def valid_from(self) -> datetime:
        return datetime.combine(self.issued, time(0), tzinfo=UTC)

    @property
    def valid_until(self) -> datetime:
        """The first instant the licence is no longer valid (midnight UTC after ``expires``)."""
        return datetime.combine(self.expires + timedelta(days=1), time(0), tzinfo=UTC)

    def problem_at(self, now: datetime) -> LicenceError | None:
        """Why the licence is not valid at ``now``, or None."""
        if now < self.valid_from:
            return LicenceNotYetValid(self.licence_id, self.customer, self.issued.isoformat())
        if now >= self.valid_until:
            return LicenceExpired(self.licence_id, self.customer, self.expires.isoformat())
        return None

    def days_left(self, now: datetime) -> int:
        """Whole days until expiry (0 on the last day, negative once expired)."""
        return (self.valid_until - now).days

    def payload(self) -> dict[str, Any]:
        return {
            "licence_id": self.licence_id,
            "customer": self.customer,
            "issued": self.issued.isoformat(),
            "expires": self.expires.isoformat(),
            "counts": self.counts.as_dict(),
        }

    def as_dict(self) -> dict[str, Any]:
        return {**self.payload(), "key_id": self.key_id}


# -- keys ----------------------------------------------------------------------------------------
def key_id(public_key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def load_public_key_pem(data: bytes, source: str = "<pem>") -> Ed25519PublicKey:
    """An Ed25519 public key from PEM (SubjectPublicKeyInfo); :class:`PublicKeyError` otherwise."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise PublicKeyError(source, f"not a PEM public key ({exc})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise PublicKeyError(source, f"not an Ed25519 key ({type(key).__name__})")
    return key


# -- canonical form ------------------------------------------------------------------------------
def canonical(payload: dict[str, Any]) -> bytes:
    return json.dumps(
        payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def signed_message(payload: dict[str, Any]) -> bytes:
    return SIGNING_PREFIX + canonical(payload)


def sign_licence(licence: Licence, private_key: Ed25519PrivateKey) -> str:
    """The licence file text for ``licence`` signed with ``private_key`` (vendor tooling, tests).

    The private key never ships with vmkeep; this function only exists so the vendor's tooling and
    the tests share one implementation of the format.
    """
    payload = licence.payload()
    signature = private_key.sign(signed_message(payload))
    envelope = {
        "format": FORMAT,
        "version": VERSION,
        "key_id": key_id(private_key.public_key()),
        "payload": payload,
        "signature": base64.b64encode(signature).decode("ascii"),
    }
    return json.dumps(envelope, indent=2, ensure_ascii=False) + "\n"


# -- parsing -------------------------------------------------------------------------------------
def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _date(value: Any, field: str, source: str) -> date:
    if not isinstance(value, str):
        raise LicenceInvalid(source, f"{field} must be an ISO date string")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise LicenceInvalid(source, f"{field} is not an ISO date: {value!r}") from None


def _text(value: Any, field: str, source: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise LicenceInvalid(source, f"{field} must be a non-empty string")
    return value


def parse_licence(data: bytes | str, public_key: Ed25519PublicKey, source: str) -> Licence:
    """Verify and decode a licence file; raises :class:`LicenceInvalid` (or its subclasses
    :class:`LicenceWrongKey`, :class:`LicenceTampered`) with a message naming ``source``.
    """
    from cryptography.exceptions import InvalidSignature

    raw = data.encode("utf-8") if isinstance(data, str) else data
    if len(raw) > MAX_SIZE:
        raise LicenceInvalid(source, f"larger than {MAX_SIZE} bytes, not a licence file")
    try:
        doc = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_reject_constant,
            parse_float=lambda s: _reject_constant("a fractional number"),
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise LicenceInvalid(source, f"not a licence file (bad JSON: {exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise LicenceInvalid(source, "not a vmkeep licence file")
    if doc.get("version") != VERSION:
        raise LicenceInvalid(
            source, f"format version {doc.get('version')!r} is not supported (this vmkeep reads 1)"
        )
    unknown = set(doc) - _ENVELOPE_KEYS
    if unknown or set(doc) != _ENVELOPE_KEYS:
        raise LicenceInvalid(
            source, "malformed envelope (expected keys: " + ", ".join(sorted(_ENVELOPE_KEYS)) + ")"
        )
    expected = key_id(public_key)
    if doc["key_id"] != expected:
        raise LicenceWrongKey(source, str(doc["key_id"]), expected)
    payload = doc["payload"]
    if not isinstance(payload, dict):
        raise LicenceTampered(source)
    try:
        signature = base64.b64decode(str(doc["signature"]), validate=True)
        public_key.verify(signature, signed_message(payload))
    except (binascii.Error, ValueError, InvalidSignature):
        raise LicenceTampered(source) from None
    return _decode_payload(payload, source, expected)


def _decode_payload(payload: dict[str, Any], source: str, kid: str) -> Licence:
    if set(payload) != _PAYLOAD_KEYS:
        raise LicenceInvalid(
            source, "payload must hold exactly: " + ", ".join(sorted(_PAYLOAD_KEYS))
        )
    counts = payload["counts"]
    if not isinstance(counts, dict):
        raise LicenceInvalid(source, "counts must be an object")
    known = {s.value for s in Sku}
    for sku, n in counts.items():
        if sku not in known:
            raise LicenceInvalid(source, f"unknown SKU {sku!r}")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise LicenceInvalid(source, f"count of {sku} must be an integer >= 0")
    issued = _date(payload["issued"], "issued", source)
    expires = _date(payload["expires"], "expires", source)
    if expires < issued:
        raise LicenceInvalid(source, "expires before it is issued")
    return Licence(
        licence_id=_text(payload["licence_id"], "licence_id", source),
        customer=_text(payload["customer"], "customer", source),
        issued=issued,
        expires=expires,
        counts=Requirements.from_mapping(counts),
        key_id=kid,
    )
