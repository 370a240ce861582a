"""Self-signed TLS certificate for the lab, valid for 127.0.0.1, ::1 and localhost, made with the
``openssl`` command (Debian package ``openssl``) so that this package needs only the stdlib."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from vmkeep.lab.errors import LabUnavailable


def generate(cert_path: Path, key_path: Path) -> None:
    """Write a fresh EC key and a 10-year self-signed certificate (PEM)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        raise LabUnavailable("`openssl` not found; apt-get install openssl")
    proc = subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/O=vmkeep/CN=vmkeep ESX lab",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1",
            "-addext",
            "extendedKeyUsage=serverAuth",
            "-keyout",
            str(key_path),
            "-out",
            str(cert_path),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise LabUnavailable(f"openssl failed: {proc.stderr.strip()[-500:]}")
    key_path.chmod(0o600)
