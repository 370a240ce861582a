"""Where the installed licence and the verifying public key live.

* The licence is per installation (not per repository): ``--license-file PATH``, else
  ``$VMKEEP_LICENSE``, else ``$VMKEEP_CONFIG_DIR/license.json`` where ``VMKEEP_CONFIG_DIR``
  defaults to ``$XDG_CONFIG_HOME/vmkeep``, else ``~/.config/vmkeep``.
* The public key is built in: :data:`VENDOR_PUBLIC_KEY_PEM`, and nothing else.  There is no
  option, environment variable or file that makes an installed vmkeep trust another key (a
  self-signed licence would otherwise pass).  Tests replace the constant in-process (the
  ``dev_licence`` fixture, ``tests/support/run_cli.py``), which needs code that only exists in
  the source tree's ``tests/`` package, never in an installed wheel.

:func:`install` verifies before writing and writes atomically (temporary file, fsync, rename), so
a broken or expired file never replaces a good licence.  :func:`load_state` never raises for a
missing, tampered or wrong-key licence: it returns the error as a value so that read-only
operations can carry on and backups can be refused with the reason.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from vmkeep import clock
from vmkeep.licensing.errors import (
    LicenceError,
    LicenceInvalid,
    LicenceNotInstalled,
)
from vmkeep.licensing.licence_file import (
    MAX_SIZE,
    Licence,
    load_public_key_pem,
    parse_licence,
)
from vmkeep.settings import config_dir, settings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

#: The vendor's licence-signing public key (Ed25519, key id 17db06544229b3e0).  Its private half is
#: kept offline by the vendor (the licence-signing service), never in this repository; it is *not*
#: the development key of ``tests/licensing/keys``, whose private half is committed.
VENDOR_PUBLIC_KEY_PEM = b"""-----BEGIN PUBLIC KEY-----
MCowBQYDK2VwAyEAJ4dYfgrZ3ySi7tc5/6z0/Y7cVhLrko/5xVe0zO/zQyA=
-----END PUBLIC KEY-----
"""

LICENCE_FILE_NAME = "license.json"
ENV_CONFIG_DIR = "VMKEEP_CONFIG_DIR"
ENV_LICENCE = "VMKEEP_LICENSE"


def licence_path(override: str | os.PathLike[str] | None = None) -> Path:
    """The installed licence's path (see the module docstring for the order)."""
    if override:
        return Path(override).expanduser()
    if found := settings().license:
        return found.expanduser()
    return config_dir() / LICENCE_FILE_NAME


def public_key() -> Ed25519PublicKey:
    """The key that licences must be signed with: the built-in vendor key, always."""
    return load_public_key_pem(VENDOR_PUBLIC_KEY_PEM, "built-in vendor key")


def _read_bounded(path: Path) -> bytes:
    """At most one byte more than a licence file may hold (:data:`MAX_SIZE`): ``/dev/zero`` or
    a huge file given by mistake is refused by size, never read whole (or forever)."""
    with open(path, "rb") as f:
        return f.read(MAX_SIZE + 1)


def read_licence(path: Path, key: Ed25519PublicKey | None = None) -> Licence:
    """Read and verify the licence at ``path``: :class:`LicenceNotInstalled` if absent.
    ``key``: the verifying key, by default the built-in one (:func:`public_key`), loaded only
    once the file was read — so a missing licence (the community tier) does not import the
    cryptography library on every backup's start-up."""
    try:
        data = _read_bounded(path)
    except FileNotFoundError:
        raise LicenceNotInstalled(str(path)) from None
    except OSError as exc:
        raise LicenceInvalid(str(path), exc.strerror or str(exc)) from None
    return parse_licence(data, public_key() if key is None else key, str(path))


@dataclass(frozen=True)
class LicenceState:
    """The installed licence, or why there is none usable (missing, invalid, key unusable)."""

    path: Path
    licence: Licence | None
    problem: LicenceError | None

    @property
    def for_check(self) -> Licence | LicenceError:
        """What :func:`vmkeep.licensing.check.check_licence` takes."""
        if self.licence is not None:
            return self.licence
        assert self.problem is not None
        return self.problem


def load_state(path: str | os.PathLike[str] | None = None) -> LicenceState:
    """The installed licence, with any problem returned rather than raised.

    ``problem`` is :class:`LicenceNotInstalled` when there is no file: the community tier applies
    (see :mod:`vmkeep.licensing.check`); any other problem refuses backups.
    """
    where = licence_path(path)
    try:
        return LicenceState(where, read_licence(where), None)
    except LicenceError as exc:
        return LicenceState(where, None, exc)


def install(
    source: str | os.PathLike[str],
    dest: str | os.PathLike[str] | None = None,
    now: datetime | None = None,
) -> tuple[Licence, Path]:
    """Verify ``source`` and install it (atomically) as the licence; returns it and its path.

    Refuses tampered, wrong-key, malformed, expired and not-yet-valid files; the installed licence
    is unchanged then.
    """
    src = Path(source).expanduser()
    key = public_key()
    try:
        data = _read_bounded(src)
    except OSError as exc:
        raise LicenceInvalid(str(src), exc.strerror or str(exc)) from None
    licence = parse_licence(data, key, str(src))
    problem = licence.problem_at(now or clock.now())
    if problem is not None:
        raise problem
    target = licence_path(dest)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".license-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return licence, target
