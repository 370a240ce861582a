"""Regression (#24 item 5): ``VMKEEP_LICENSE_PUBKEY`` pointing at one's own key accepted a
self-signed licence with any counts.  The vendor key is built in; nothing outside the process
changes it, and it is not the development key whose private half the repository holds."""

from __future__ import annotations

import inspect
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import vmkeep.licensing.store as store
from tests.licensing.licensing_devkeys import DEV_PUBLIC, licence_text
from tests.security.licence_helpers import make_image, new_repo, real_cli
from vmkeep.licensing.licence_file import key_id, load_public_key_pem
from vmkeep.storage.repository import Repository

ROOT = Path(__file__).resolve().parents[2]


def own_key(tmp_path: Path) -> tuple[Ed25519PrivateKey, Path]:
    key = Ed25519PrivateKey.generate()
    pem = tmp_path / "mine.pem"
    pem.write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, pem


def test_a_self_signed_licence_is_refused_whatever_the_environment(tmp_path: Path) -> None:
    key, pem = own_key(tmp_path)
    forged = tmp_path / "forged.json"
    forged.write_text(licence_text(key, customer="Me", esx_5seat_addon=10_000,
                                   backup_client=10_000))
    env = {"VMKEEP_LICENSE_PUBKEY": str(pem), "VMKEEP_LICENSE": str(forged)}
    install = real_cli("license", "install", str(forged), **env)
    assert install.returncode == 17
    assert f"signed by key {key_id(key.public_key())}" in install.stderr
    assert "trusts key 17db06544229b3e0" in install.stderr
    # installed anyway (copied by hand): it is not a licence, so backups are refused outright
    repo = new_repo(tmp_path / "repo")
    image = make_image(tmp_path / "disk.img", 1)
    backup = real_cli("backup", "image", str(image), "--name", "d", VMKEEP_REPO=repo, **env)
    assert backup.returncode == 17 and "signed by key" in backup.stderr
    assert Repository.open(repo).list_points() == []
    assert real_cli("license", "install", str(forged), "--pubkey", str(pem)).returncode == 2


def test_the_built_in_key_is_not_the_development_key() -> None:
    vendor = load_public_key_pem(store.VENDOR_PUBLIC_KEY_PEM)
    dev = load_public_key_pem(DEV_PUBLIC.read_bytes())
    assert key_id(vendor) == "17db06544229b3e0" != key_id(dev)
    # no private key anywhere in the source tree belongs to the vendor key (not the virtualenv,
    # not `make demo`'s work folder, whose guest tree holds /etc/ssl/certs's dangling symlinks)
    for path in ROOT.rglob("*.pem"):
        if {".venv", "demo-work"} & set(path.relative_to(ROOT).parts) or not path.is_file():
            continue
        if b"PRIVATE KEY" not in path.read_bytes():
            continue
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert key_id(private.public_key()) != key_id(vendor), path  # type: ignore[arg-type]


def test_no_code_path_reads_a_key_from_outside() -> None:
    assert inspect.signature(store.public_key).parameters == {}
    source = "\n".join(
        p.read_text() for p in (ROOT / "vmkeep").rglob("*.py")
    )
    assert "VMKEEP_LICENSE_PUBKEY" not in source and "--pubkey" not in source
