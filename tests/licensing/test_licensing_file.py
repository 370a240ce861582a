"""Signed licence files: round trip, tampering, wrong key, malformed, expiry, install."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.licensing.licensing_devkeys import DEV_LICENCE, DEV_PUBLIC, dev_private_key, licence_text
from vmkeep.licensing.errors import (
    LicenceExpired,
    LicenceInvalid,
    LicenceNotInstalled,
    LicenceNotYetValid,
    LicenceTampered,
    LicenceWrongKey,
)
from vmkeep.licensing.licence_file import key_id, load_public_key_pem, parse_licence
from vmkeep.licensing.store import (
    VENDOR_PUBLIC_KEY_PEM,
    install,
    licence_path,
    load_state,
    public_key,
)

PUB = load_public_key_pem(DEV_PUBLIC.read_bytes())
NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)


def doc(**kw: object) -> dict:
    return json.loads(licence_text(**kw))


def test_round_trip() -> None:
    text = licence_text(customer="ACME", backup_client=4, esx_server_client_5seat=1)
    lic = parse_licence(text, PUB, "x")
    assert lic.customer == "ACME"
    assert lic.counts.backup_client == 4 and lic.counts.esx_server_client_5seat == 1
    assert lic.counts.esx_5seat_addon == 0
    assert lic.key_id == key_id(PUB)
    assert lic.problem_at(NOW) is None


def test_committed_dev_licence_verifies() -> None:
    lic = parse_licence(DEV_LICENCE.read_bytes(), PUB, str(DEV_LICENCE))
    assert lic.licence_id == "dev-unlimited"


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d["payload"]["counts"].__setitem__("backup_client", 5),
        lambda d: d["payload"].__setitem__("customer", "Evil Corp"),
        lambda d: d["payload"].__setitem__("expires", "2199-12-31"),
        lambda d: d["payload"]["counts"].__setitem__("esx_5seat_addon", 1),
        lambda d: d["payload"]["counts"].pop("autoloader_slot"),
        lambda d: d.__setitem__("signature", base64.b64encode(b"\0" * 64).decode()),
        lambda d: d.__setitem__("signature", "not base64!"),
        lambda d: d.__setitem__("payload", "a string"),
    ],
)
def test_tampered_rejected(mutate) -> None:
    d = doc(backup_client=4, autoloader_slot=3)
    mutate(d)
    with pytest.raises(LicenceTampered) as info:
        parse_licence(json.dumps(d), PUB, "lic.json")
    assert "modified or is corrupt" in str(info.value)
    assert info.value.exit_code == 17


def test_bit_flip_anywhere_in_payload_is_rejected() -> None:
    text = licence_text(backup_client=4)
    d = json.loads(text)
    for key in ("licence_id", "customer", "issued"):
        value = d["payload"][key]
        d2 = json.loads(text)
        d2["payload"][key] = value[:-1] + chr(ord(value[-1]) ^ 1)
        with pytest.raises((LicenceTampered, LicenceInvalid)):
            parse_licence(json.dumps(d2), PUB, "x")


def test_wrong_key_rejected_with_both_key_ids() -> None:
    other = Ed25519PrivateKey.generate()
    text = licence_text(key=other, backup_client=1)
    with pytest.raises(LicenceWrongKey) as info:
        parse_licence(text, PUB, "lic.json")
    msg = str(info.value)
    assert key_id(other.public_key()) in msg and key_id(PUB) in msg


def test_forged_key_id_still_needs_the_signature() -> None:
    other = Ed25519PrivateKey.generate()
    d = json.loads(licence_text(key=other, backup_client=1))
    d["key_id"] = key_id(PUB)
    with pytest.raises(LicenceTampered):
        parse_licence(json.dumps(d), PUB, "x")


def test_vendor_key_rejects_dev_licences() -> None:
    vendor = load_public_key_pem(VENDOR_PUBLIC_KEY_PEM)
    with pytest.raises(LicenceWrongKey):
        parse_licence(licence_text(), vendor, "x")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (b"\xff\xfe", "bad JSON"),
        (b"{", "bad JSON"),
        (b"[]", "not a vmkeep licence"),
        (b'{"format": "other"}', "not a vmkeep licence"),
        (b'{"format": "vmkeep-licence", "version": 2}', "version 2 is not supported"),
        (b'{"format": "vmkeep-licence", "version": 1}', "malformed envelope"),
        (b"x" * (70 * 1024), "larger than"),
        (b'{"format": "vmkeep-licence", "format": "vmkeep-licence"}', "duplicate key"),
        (b'{"format": "vmkeep-licence", "version": 1, "x": NaN}', "NaN"),
    ],
)
def test_malformed(text: bytes, fragment: str) -> None:
    with pytest.raises(LicenceInvalid) as info:
        parse_licence(text, PUB, "bad.json")
    assert fragment in str(info.value)
    assert "bad.json" in str(info.value)


def test_validly_signed_but_bad_payload_is_rejected() -> None:
    from vmkeep.licensing.licence_file import signed_message

    key = dev_private_key()
    d = doc()
    for payload, fragment in [
        ({**d["payload"], "counts": {"gold": 1}}, "unknown SKU"),
        ({**d["payload"], "counts": {"backup_client": -1}}, "integer >= 0"),
        ({**d["payload"], "counts": {"backup_client": True}}, "integer >= 0"),
        ({**d["payload"], "issued": "yesterday"}, "not an ISO date"),
        ({**d["payload"], "expires": "2000-01-01"}, "expires before"),
        ({**d["payload"], "extra": 1}, "exactly"),
        ({**d["payload"], "customer": " "}, "non-empty"),
    ]:
        d2 = {**d, "payload": payload}
        d2["signature"] = base64.b64encode(key.sign(signed_message(payload))).decode()
        with pytest.raises(LicenceInvalid) as info:
            parse_licence(json.dumps(d2), PUB, "x")
        assert fragment in str(info.value)


def test_validity_window() -> None:
    lic = parse_licence(licence_text(issued=date(2025, 1, 1), expires=date(2025, 6, 1)), PUB, "x")
    assert lic.problem_at(datetime(2025, 6, 1, 23, 59, 59, tzinfo=UTC)) is None
    assert isinstance(lic.problem_at(datetime(2025, 6, 2, tzinfo=UTC)), LicenceExpired)
    assert isinstance(lic.problem_at(datetime(2024, 12, 31, tzinfo=UTC)), LicenceNotYetValid)
    assert lic.days_left(datetime(2025, 6, 1, tzinfo=UTC)) == 1
    assert "expired on 2025-06-01" in str(lic.problem_at(datetime(2026, 1, 1, tzinfo=UTC)))


# -- store ---------------------------------------------------------------------------------------
def test_paths_and_keys(dev_env: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert licence_path() == dev_env / "license.json"
    monkeypatch.setenv("VMKEEP_LICENSE", str(tmp_path / "elsewhere.json"))
    assert licence_path() == tmp_path / "elsewhere.json"
    assert licence_path(tmp_path / "flag.json") == tmp_path / "flag.json"
    monkeypatch.delenv("VMKEEP_CONFIG_DIR")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("VMKEEP_LICENSE")
    assert licence_path() == tmp_path / "xdg" / "vmkeep" / "license.json"
    assert key_id(public_key()) == key_id(PUB)  # dev_env trusts the dev key in-process
    monkeypatch.undo()  # back to the built-in vendor key
    assert key_id(public_key()) == "17db06544229b3e0" != key_id(PUB)


def test_install_and_load(dev_env: Path, tmp_path: Path) -> None:
    assert isinstance(load_state().problem, LicenceNotInstalled)
    src = tmp_path / "lic.json"
    src.write_text(licence_text(backup_client=3))
    lic, where = install(src, now=NOW)
    assert where == dev_env / "license.json" and where.read_bytes() == src.read_bytes()
    state = load_state()
    assert state.licence == lic and state.problem is None


def test_install_refuses_bad_files_and_keeps_the_old_one(dev_env: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text(licence_text(backup_client=3))
    install(good, now=NOW)
    expired = tmp_path / "expired.json"
    expired.write_text(licence_text(issued=date(2020, 1, 1), expires=date(2021, 1, 1)))
    with pytest.raises(LicenceExpired):
        install(expired, now=NOW)
    tampered = tmp_path / "tampered.json"
    d = doc(backup_client=3)
    d["payload"]["counts"]["backup_client"] = 300
    tampered.write_text(json.dumps(d))
    with pytest.raises(LicenceTampered):
        install(tampered, now=NOW)
    with pytest.raises(LicenceInvalid):
        install(tmp_path / "missing.json", now=NOW)
    assert (dev_env / "license.json").read_bytes() == good.read_bytes()
    assert [p.name for p in dev_env.iterdir()] == ["license.json"]


def test_load_state_reports_tampering_as_value(dev_env: Path) -> None:
    dev_env.mkdir(parents=True)
    d = doc()
    d["payload"]["customer"] = "someone else"
    (dev_env / "license.json").write_text(json.dumps(d))
    state = load_state()
    assert state.licence is None and isinstance(state.problem, LicenceTampered)
    assert state.for_check is state.problem


def test_a_device_or_huge_file_is_refused_by_size_not_read_whole(dev_env: Path) -> None:
    """``license install /dev/zero`` read forever (the size check came after reading all of
    it); now at most one byte more than a licence may hold is read."""
    with pytest.raises(LicenceInvalid, match="larger than"):
        install("/dev/zero", now=NOW)
