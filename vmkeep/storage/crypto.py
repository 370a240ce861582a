"""Encryption at rest: AES-256-GCM objects under a master key wrapped by passphrases.

Keys
----
A repository initialised with ``--encrypt`` has a random **master key**: 32 bytes of AES-256-GCM
key (``encrypt``) and the 32-byte BLAKE3 key for chunk ids (``hash_key``, which then no longer
appears in ``config``).  The master key is stored only wrapped, in one or more **key files**
``keys/<32 hex>`` (JSON, not encrypted)::

    {"format": "vmkeep-key", "version": 1, "created": ISO-8601, "hostname": str,
     "kdf": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": base64 (16 bytes),
     "data": base64(nonce(12) || AES-256-GCM(scrypt(passphrase, salt), master JSON,
                                            ad = b"vmkeep key v1"))}

Any key file's passphrase opens the repository; ``vmkeep key add/remove`` manage them (the last
key cannot be removed).  A wrong passphrase fails the AEAD tag of every key file:
:class:`WrongPassword` (exit 12).

Objects
-------
Every object except ``config`` and ``keys/`` is encrypted with the master key, AES-256-GCM with a
random 96-bit nonce: ``nonce(12) || ciphertext || tag(16)``, and associated data that binds the
object's role and name, so an object cannot be moved, swapped or replayed under another name:

* index files, manifests, locks, tombstones, catalogs and ``config.sealed`` (whole objects,
  :class:`CipherBackend`): ad = ``b"vmkeep object v1\\0" + key`` (e.g.
  ``manifests/<id>.parquet``).  ``config.sealed`` is the exact bytes of ``config``, which the
  repository compares on open (see :mod:`vmkeep.storage.repository`);
* blob payloads inside packs (each individually, so ranged reads still work): ad =
  ``b"vmkeep blob v1\\0" + blob id``; a compression unit's payload (repository version 4,
  several pieces in one zstd frame, sealed once): ad = ``b"vmkeep unit v1\\0"`` + its decoded
  length (u32 LE), each piece then authenticated by its keyed id; the pack trailer: ad =
  ``b"vmkeep pack trailer v1"``.
  Packs keep their layout (``VMKPACK1`` …) with end magic ``VMKPENC1``; their name stays the
  BLAKE3 of the (encrypted) bytes, so ``check`` verifies them without the key.

A manifest's name is the BLAKE3 of its plaintext, which the reader re-checks after decryption.
Nonces are random (2^-32 collision bound after ~2^32 objects per key, far beyond any repository).
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import socket
import stat
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from vmkeep import clock
from vmkeep.settings import settings
from vmkeep.storage.backend import Backend, WrappingBackend
from vmkeep.storage.errors import (
    DataCorrupt,
    FormatError,
    KeysUnreadable,
    ObjectNotFound,
    PasswordRequired,
    PasswordUnreadable,
    WrongPassword,
)

log = logging.getLogger(__name__)

NONCE = 12
TAG = 16
OVERHEAD = NONCE + TAG
KEY_PREFIX = "keys"
KEY_FORMAT = "vmkeep-key"
KEY_AD = b"vmkeep key v1"
OBJECT_AD = b"vmkeep object v1\0"
BLOB_AD = b"vmkeep blob v1\0"
#: A compression unit's payload (repository version 4): ``UNIT_AD`` + its decoded length, u32 LE.
UNIT_AD = b"vmkeep unit v1\0"
#: scrypt cost ``init`` and ``key add`` write: n = 2^15 (≈ 32 MiB, ≈ 0.1 s), r = 8, p = 1.
#: Nothing in the product lowers it (no environment variable): the test suite patches this
#: constant in-process (``tests/fast_kdf.py``), which a normal install does not ship.
SCRYPT_N = 1 << 15
SCRYPT_R = 8
SCRYPT_P = 1
#: The most a key file may ask for when read: exactly what this version writes, so a planted key
#: file cannot make every open spend seconds and gigabytes (n = 2^21: 14.6 s, 2.2 GB) before the
#: KDF even runs.  A constant, not :data:`SCRYPT_N`: patching the latter never widens it.
SCRYPT_N_MAX = 1 << 15
#: Key files are small JSON documents; anything larger is refused before parsing.
MAX_KEY_FILE = 64 * 1024
PLAIN_PREFIXES = ("config", f"{KEY_PREFIX}/", "packs/")


class ObjectCipher:
    """AES-256-GCM sealing with associated data.  Thread-safe (no mutable state)."""

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the encryption key must be 32 bytes")
        self._aead = AESGCM(key)

    def seal(self, data: bytes | memoryview, ad: bytes) -> bytes:
        nonce = os.urandom(NONCE)
        return nonce + self._aead.encrypt(nonce, bytes(data), ad)

    def open(self, sealed: bytes | memoryview, ad: bytes, where: str) -> bytes:
        if len(sealed) < OVERHEAD:
            raise DataCorrupt(where, "encrypted object too short")
        try:
            return self._aead.decrypt(sealed[:NONCE], sealed[NONCE:], ad)
        except InvalidTag:
            raise DataCorrupt(
                where, "authentication failed (tampered, or not this repository)"
            ) from None

    def seal_blob(self, blob_id: bytes, payload: bytes | memoryview) -> bytes:
        return self.seal(payload, BLOB_AD + blob_id)

    def open_blob(self, blob_id: bytes, sealed: bytes | memoryview, where: str) -> bytes:
        return self.open(sealed, BLOB_AD + blob_id, where)

    def seal_unit(self, unit_length: int, payload: bytes | memoryview) -> bytes:
        """A compression unit sealed as one payload (no single chunk id names a unit: each
        piece is authenticated by its keyed id after the unit is opened and decoded)."""
        return self.seal(payload, UNIT_AD + unit_length.to_bytes(4, "little"))

    def open_unit(self, unit_length: int, sealed: bytes | memoryview, where: str) -> bytes:
        return self.open(sealed, UNIT_AD + unit_length.to_bytes(4, "little"), where)


@dataclass(frozen=True)
class MasterKey:
    encrypt: bytes
    hash_key: bytes

    @classmethod
    def new(cls) -> MasterKey:
        return cls(secrets.token_bytes(32), secrets.token_bytes(32))

    def to_json(self) -> bytes:
        return json.dumps({"encrypt": self.encrypt.hex(), "hash_key": self.hash_key.hex()}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> MasterKey:
        obj = json.loads(data)
        return cls(bytes.fromhex(obj["encrypt"]), bytes.fromhex(obj["hash_key"]))


def _kek(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(password.encode())


def wrap_key(master: MasterKey, password: str) -> tuple[str, bytes]:
    """A new key file for ``master`` under ``password``: ``(object key, bytes)``."""
    if not password:
        raise PasswordRequired("(new key)")
    salt = os.urandom(16)
    n, r, p = SCRYPT_N, SCRYPT_R, SCRYPT_P
    sealed = ObjectCipher(_kek(password, salt, n, r, p)).seal(master.to_json(), KEY_AD)
    body = {
        "format": KEY_FORMAT,
        "version": 1,
        "created": clock.now().isoformat(),
        "hostname": socket.gethostname(),
        "kdf": "scrypt",
        "n": n,
        "r": r,
        "p": p,
        "salt": base64.b64encode(salt).decode(),
        "data": base64.b64encode(sealed).decode(),
    }
    return f"{KEY_PREFIX}/{secrets.token_hex(16)}", json.dumps(body, indent=2).encode()


def key_params(data: bytes, where: str) -> tuple[int, int, int, bytes, bytes]:
    """A key file's ``(n, r, p, salt, sealed)``, checked by type and bounded to what this
    version writes (n a power of two ≤ :data:`SCRYPT_N_MAX`, r = 8, p = 1, a 16-byte salt)
    before any KDF runs.  Raises ``FormatError``."""
    try:
        if len(data) > MAX_KEY_FILE:
            raise ValueError(f"key file larger than {MAX_KEY_FILE} bytes")
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise ValueError("not a vmkeep key file")
        if obj.get("format") != KEY_FORMAT or obj.get("kdf") != "scrypt":
            raise ValueError("not a vmkeep key file")
        n, r, p = obj["n"], obj["r"], obj["p"]
        if not all(type(v) is int for v in (n, r, p)):
            raise ValueError("scrypt parameters must be integers")
        if not (2 <= n <= SCRYPT_N_MAX and n & (n - 1) == 0 and r == SCRYPT_R and p == SCRYPT_P):
            raise ValueError(
                f"scrypt parameters n={n}, r={r}, p={p} exceed what vmkeep writes "
                f"(n ≤ {SCRYPT_N_MAX}, r = {SCRYPT_R}, p = {SCRYPT_P})"
            )
        salt = base64.b64decode(obj["salt"], validate=True)
        sealed = base64.b64decode(obj["data"], validate=True)
        if len(salt) != 16:
            raise ValueError("bad salt")
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(where, str(exc)) from None
    return n, r, p, salt, sealed


def unwrap_key(data: bytes, password: str, where: str) -> MasterKey | None:
    """The master key in a key file, or ``None`` when ``password`` does not open it.
    ``FormatError`` for a malformed key file (see :func:`key_params`)."""
    n, r, p, salt, sealed = key_params(data, where)
    try:
        plain = ObjectCipher(_kek(password, salt, n, r, p)).open(sealed, KEY_AD, where)
    except DataCorrupt:
        return None
    try:
        return MasterKey.from_json(plain)
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(where, f"bad master key: {exc}") from None


def key_ids(backend: Backend) -> list[str]:
    return sorted(k.rsplit("/", 1)[-1] for k, _ in backend.list(KEY_PREFIX))


def open_master_key(
    backend: Backend, password: str, belongs: Callable[[MasterKey], bool] | None = None
) -> tuple[str, MasterKey]:
    """Try every key file; ``(key id, master key)`` or :class:`WrongPassword`.

    A key file that is malformed (logged), that ``password`` does not open, or whose master key
    ``belongs`` rejects (another repository's key file, copied in, opened by the same
    passphrase) does not stop the search: the next key file is tried.  When every key the
    password opens is rejected by ``belongs``, the first is returned anyway: then the
    repository's own check fails loudly (a tampered ``config.sealed`` is ``DataCorrupt``, not a
    wrong password)."""
    rejected: tuple[str, MasterKey] | None = None
    tried = 0
    unreadable: list[str] = []
    sizes = {k.rsplit("/", 1)[-1]: size for k, size in backend.list(KEY_PREFIX)}
    for key_id in sorted(sizes):
        key = f"{KEY_PREFIX}/{key_id}"
        if sizes[key_id] > MAX_KEY_FILE:  # not even read: a planted giant cannot cost memory
            log.warning("skipping key file %s: larger than %d bytes", key_id[:12], MAX_KEY_FILE)
            unreadable.append(f"{key_id[:12]}: larger than {MAX_KEY_FILE} bytes")
            continue
        try:
            master = unwrap_key(backend.get(key), password, key)
        except ObjectNotFound:
            continue
        except FormatError as exc:
            log.warning("skipping key file %s: %s", key_id[:12], exc.get_message())
            unreadable.append(f"{key_id[:12]}: {exc.args[-1]}")
            continue
        tried += 1
        if master is None:
            continue
        if belongs is not None and not belongs(master):
            log.warning("skipping key file %s: it opens another repository's key", key_id[:12])
            rejected = rejected or (key_id, master)
            continue
        return key_id, master
    if rejected is not None:
        return rejected
    if unreadable and not tried:  # no password could open it: say so, not "wrong password"
        raise KeysUnreadable(backend.location, "; ".join(unreadable))
    raise WrongPassword(backend.location)


#: a password command's answer or a handed-over pipe's, kept for this process per (prefix,
#: command line or ``/dev/fd/N``): the two repositories of ``copy`` may ask the same way for
#: different passwords (see :func:`password_from_env`)
_ANSWERS: dict[tuple[str, str], str] = {}
#: where a parent hands a child its password (:func:`hand_over_password`): readable once
HANDED_OVER = "/dev/fd/"


def _read_once(path: str) -> bool:
    """Whether the password "file" ``path`` can be read only once: a pipe or FIFO (a handed-over
    pipe, ``<(pass show vmkeep)``, ``/dev/stdin``), not a regular file."""
    try:
        return not stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def read_password_file(path: str, what: str) -> str:
    """The first line of the password file ``path`` (set by the variable ``what``), or
    :class:`PasswordUnreadable` saying why not: missing, unreadable, not UTF-8, empty."""
    try:
        with open(path, encoding="utf-8") as f:
            line = f.readline().rstrip("\r\n")
    except OSError as exc:
        raise PasswordUnreadable(what, exc.strerror or str(exc)) from None
    except UnicodeDecodeError:
        raise PasswordUnreadable(what, "its first line is not UTF-8 text") from None
    if not line:
        raise PasswordUnreadable(what, "its first line is empty")
    return line


def password_from_env(prefix: str = "") -> str | None:
    """The repository password from ``VMKEEP_PASSWORD``, ``VMKEEP_PASSWORD_FILE`` (first line)
    or ``VMKEEP_PASSWORD_COMMAND`` (its stdout's first line), in that order; never argv.
    ``prefix="from_"``: the source repository's of ``vmkeep copy`` (``VMKEEP_FROM_PASSWORD``,
    ``_FILE``, ``_COMMAND``).

    A password command runs at most once per process (per prefix and command line): it may prompt
    (pinentry), read a vault that audits each read or wait for a token's touch, and a command
    that opens a repository more than once must not ask again.  Its answer stays in this
    process's memory, as the master key it opens does; a command that failed runs again.  So
    does a password file that can be read only once (a pipe: ``<(pass show vmkeep)``,
    ``/dev/stdin``, what a parent hands over)."""
    env = settings()
    what = f"VMKEEP_{prefix.upper()}PASSWORD"
    password = getattr(env, f"{prefix}password")
    if password:
        return str(password.get_secret_value())
    file = getattr(env, f"{prefix}password_file")
    if file:
        path = str(file)
        if (prefix, path) in _ANSWERS:
            return _ANSWERS[prefix, path]
        once = _read_once(path)
        line = read_password_file(path, f"{what}_FILE")
        if once:
            _ANSWERS[prefix, path] = line
        return line
    command = getattr(env, f"{prefix}password_command")
    if command:
        if (prefix, command) in _ANSWERS:
            return _ANSWERS[prefix, command]
        answer = _ANSWERS[prefix, command] = _run_password_command(command, f"{what}_COMMAND")
        return answer
    return None


def _run_password_command(command: str, what: str) -> str:
    """The first line a password command prints (it may take 60 s: a prompt, a token's touch);
    :class:`PasswordUnreadable` saying why when it fails, times out or prints nothing."""
    try:
        done = subprocess.run(command, shell=True, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise PasswordUnreadable(what, "it did not answer within 60 s") from None
    except OSError as exc:
        raise PasswordUnreadable(what, exc.strerror or str(exc)) from None
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        why = f"it exited with status {done.returncode}" + (f": {said[-1]}" if said else "")
        raise PasswordUnreadable(what, why)
    try:
        lines = done.stdout.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        raise PasswordUnreadable(what, "its answer is not UTF-8 text") from None
    if not lines or not lines[0]:
        raise PasswordUnreadable(what, "it printed no password")
    return lines[0]


def hand_over_password(env: dict[str, str]) -> list[int]:
    """Prepare ``env``, a child process's environment, so the child does not ask for the
    repository password again: when this process got its password from
    ``VMKEEP_PASSWORD_COMMAND`` (it asked already: an unencrypted repository asks nothing, and
    neither does this) or from a file that can be read only once (a pipe: what its own parent
    handed over, ``<(…)``, ``/dev/stdin``), and the child would ask the same way, the answer
    goes into a new pipe, ``env`` names it
    (``VMKEEP_PASSWORD_FILE=/dev/fd/N``, read once by the child) and loses the command.  The
    passphrase is never put in an environment or argv.  Returns the descriptors to pass
    (``pass_fds``); the caller closes them once the child started.  A password from
    ``VMKEEP_PASSWORD`` or a regular file reaches the child as it reached this process."""
    own = settings()
    path, command = str(own.password_file or ""), own.password_command or ""
    child = (env.get("VMKEEP_PASSWORD"), env.get("VMKEEP_PASSWORD_FILE"),
             env.get("VMKEEP_PASSWORD_COMMAND"))
    if own.password or child != (None, path or None, command or None):
        return []  # a password in the environment, or one the caller gave the child itself
    if path and (("", path) in _ANSWERS or _read_once(path)):
        password = password_from_env()  # this process's pipe: read (once) and handed on
    elif command and not path:
        password = _ANSWERS.get(("", command))
    else:
        return []  # a regular file: the child reads it as this process did
    if password is None:
        return []
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, password.encode() + b"\n")  # far below a pipe's buffer
    finally:
        os.close(write_end)
    env.pop("VMKEEP_PASSWORD_COMMAND", None)
    env["VMKEEP_PASSWORD_FILE"] = f"{HANDED_OVER}{read_end}"
    return [read_end]


class CipherBackend(WrappingBackend):
    """Encrypts whole objects (index files, manifests, locks) on the way out and authenticates
    them on the way in; ``config``, ``keys/`` and packs (encrypted blob by blob by the
    repository) pass through unchanged.  Ranged reads are only allowed on pass-through keys."""

    def __init__(self, inner: Backend, cipher: ObjectCipher) -> None:
        super().__init__(inner)
        self.cipher = cipher

    @staticmethod
    def _plain(key: str) -> bool:
        return key == "config" or key.startswith(PLAIN_PREFIXES[1:])

    def put(self, key: str, data: bytes | memoryview) -> None:
        if not self._plain(key):
            data = self.cipher.seal(data, OBJECT_AD + key.encode())
        self.inner.put(key, data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        if self._plain(key):
            return self.inner.get(key, offset, length)
        data = self.cipher.open(self.inner.get(key), OBJECT_AD + key.encode(), key)
        if offset or length is not None:
            end = None if length is None else offset + length
            return data[offset:end]
        return data



# -- key management (``vmkeep key add|remove|list``) ------------------------------------------
def list_keys(backend: Backend, current: str | None = None) -> list[dict[str, object]]:
    """Key files' public fields (never the wrapped key)."""
    out: list[dict[str, object]] = []
    for key_id in key_ids(backend):
        try:
            obj = json.loads(backend.get(f"{KEY_PREFIX}/{key_id}"))
        except (ObjectNotFound, ValueError):
            continue
        out.append(
            {
                "id": key_id,
                "created": obj.get("created"),
                "hostname": obj.get("hostname"),
                "current": key_id == current,
            }
        )
    return out


def add_key(backend: Backend, master: MasterKey, password: str) -> str:
    """Wrap ``master`` under another passphrase; returns the new key id (atomic put)."""
    key, body = wrap_key(master, password)
    backend.put(key, body)
    return key.rsplit("/", 1)[-1]


def remove_key(backend: Backend, key_id: str, current: str | None) -> None:
    """Delete a key file.  Refuses the key in use and the last key (the repository would be
    unreadable)."""
    from vmkeep.errors import UsageError

    ids = key_ids(backend)
    matches = [k for k in ids if k.startswith(key_id)]
    if len(matches) != 1:
        raise UsageError(f"no unique key matches {key_id!r}")
    if matches[0] == current:
        raise UsageError("refusing to remove the key in use (open with another password)")
    if len(ids) < 2:
        raise UsageError("refusing to remove the last key")
    backend.delete(f"{KEY_PREFIX}/{matches[0]}")
