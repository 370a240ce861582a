"""Encryption at rest: round trips, nothing in clear, wrong passwords, tampering, keys, prune."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fast_kdf import TEST_SCRYPT_N
from tests.storage.storage_helpers import backup, restored_sha, scribble, sha, write_image
from vmkeep.storage import crypto
from vmkeep.storage.checker import check_repository
from vmkeep.storage.crypto import add_key, list_keys, password_from_env, remove_key
from vmkeep.storage.errors import DataCorrupt, PasswordRequired, WrongPassword
from vmkeep.storage.forget import forget_ids
from vmkeep.storage.manifest import point_key
from vmkeep.storage.prune import prune
from vmkeep.storage.repository import Repository

PW = "correct horse battery staple"


@pytest.fixture(autouse=True)
def cheap_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(crypto, "SCRYPT_N", TEST_SCRYPT_N)  # test-only, in-process
    for name in ("VMKEEP_PASSWORD", "VMKEEP_PASSWORD_FILE", "VMKEEP_PASSWORD_COMMAND"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def enc(tmp_path: Path) -> Repository:
    return Repository.init(
        str(tmp_path / "repo"), image_chunk_size=64 * 1024, pack_size=256 << 10, password=PW
    )


def test_roundtrip_and_nothing_in_clear(enc: Repository, tmp_path: Path) -> None:
    img = write_image(tmp_path / "a.img")
    backup(enc, img)
    scribble(img, [(0, 100_000)])
    p2, _ = backup(enc, img)
    fresh = Repository.open(enc.backend.location, password=PW)
    assert fresh.config.encrypted and fresh.config.hash_key == ""
    assert check_repository(fresh, read_data=True).ok
    assert restored_sha(fresh, p2.id, tmp_path) == sha(img)
    root = Path(enc.backend.location)
    for path in root.rglob("*"):
        if path.is_file() and path.name != "config" and path.parent.name != "keys":
            data = path.read_bytes()
            assert b"the quick brown fox" not in data, path
            assert b"PAR1" not in data[:8], path  # parquet files are not readable in clear
            assert b"vmkeep-lock" not in data and b'"img"' not in data, path


def test_passwords(enc: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loc = enc.backend.location
    with pytest.raises(PasswordRequired) as missing:
        Repository.open(loc)
    assert missing.value.exit_code == 12
    with pytest.raises(WrongPassword) as wrong:
        Repository.open(loc, password="nope")
    assert wrong.value.exit_code == 12
    monkeypatch.setenv("VMKEEP_PASSWORD", PW)
    assert Repository.open(loc).cipher is not None
    monkeypatch.delenv("VMKEEP_PASSWORD")
    pwfile = tmp_path / "pw"
    pwfile.write_text(PW + "\n")
    monkeypatch.setenv("VMKEEP_PASSWORD_FILE", str(pwfile))
    assert password_from_env() == PW
    monkeypatch.delenv("VMKEEP_PASSWORD_FILE")
    monkeypatch.setenv("VMKEEP_PASSWORD_COMMAND", f"echo '{PW}'")
    assert Repository.open(loc).cipher is not None


@pytest.mark.parametrize(("variable", "value", "says"), [
    ("VMKEEP_PASSWORD_FILE", b"", "its first line is empty"),
    ("VMKEEP_PASSWORD_FILE", b"\n" + PW.encode(), "its first line is empty"),
    ("VMKEEP_PASSWORD_FILE", b"\xff\xfe secret", "not UTF-8 text"),
    ("VMKEEP_PASSWORD_FILE", None, "Is a directory"),
    ("VMKEEP_PASSWORD_COMMAND", "exit 3", "exited with status 3"),
    ("VMKEEP_PASSWORD_COMMAND", "echo vault sealed >&2; exit 1", "status 1: vault sealed"),
    ("VMKEEP_PASSWORD_COMMAND", "true", "printed no password"),
    ("VMKEEP_PASSWORD_COMMAND", "printf '\\377\\n'", "not UTF-8 text"),
])
def test_a_password_source_that_gives_none_says_why(
    enc: Repository, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    variable: str, value: bytes | str | None, says: str,
) -> None:
    """A password file that is empty or not text, a command that fails or prints nothing: the
    error says which and why (exit 12).  Before: "wrong password" for an empty answer, a
    ``UnicodeDecodeError`` traceback for bytes, "CalledProcessError" for a failed command."""
    from vmkeep.storage.errors import PasswordUnreadable

    if variable.endswith("_FILE"):
        target = tmp_path / "pw"
        if value is None:
            target.mkdir()
        else:
            assert isinstance(value, bytes)
            target.write_bytes(value)
        monkeypatch.setenv(variable, str(target))
    else:
        assert isinstance(value, str)
        monkeypatch.setenv(variable, value)
    crypto._ANSWERS.clear()
    with pytest.raises(PasswordUnreadable, match=says) as err:
        Repository.open(enc.backend.location)
    assert err.value.exit_code == 12 and variable in err.value.get_message()


def test_tampering_and_swapping_are_detected(enc: Repository, tmp_path: Path) -> None:
    a, _ = backup(enc, write_image(tmp_path / "a.img", seed=1), name="a")
    b, _ = backup(enc, write_image(tmp_path / "b.img", seed=2), name="b")
    root = Path(enc.backend.location)
    ka, kb = root / point_key(a.id), root / point_key(b.id)
    data = bytearray(ka.read_bytes())
    data[40] ^= 1
    ka.write_bytes(bytes(data))
    fresh = Repository.open(enc.backend.location, password=PW)
    with pytest.raises(DataCorrupt):
        fresh.load_point(a.id)
    kb_bytes = kb.read_bytes()
    ka.write_bytes(kb_bytes)  # b's manifest replayed under a's name
    with pytest.raises(DataCorrupt):
        fresh.load_point(a.id)
    report = check_repository(fresh)
    assert [p.kind for p in report.problems] == ["bad-manifest"]
    # a blob moved to another place in a pack fails too: flip a pack byte
    pack = next(p for p in (root / "packs").rglob("*") if p.is_file())
    raw = bytearray(pack.read_bytes())
    raw[20] ^= 1
    pack.write_bytes(bytes(raw))
    assert not check_repository(fresh, read_data=True).ok


def test_keys_add_remove(enc: Repository) -> None:
    loc = enc.backend.location
    assert enc.master is not None
    new_id = add_key(enc.raw_backend, enc.master, "second")
    opened = Repository.open(loc, password="second")
    assert opened.key_id == new_id
    assert {k["id"] for k in list_keys(opened.raw_backend)} == {new_id, enc.key_id}
    first = Repository.open(loc, password=PW)
    from vmkeep.errors import UsageError

    with pytest.raises(UsageError):
        remove_key(opened.raw_backend, new_id, opened.key_id)  # the key in use
    remove_key(opened.raw_backend, first.key_id or "", opened.key_id)
    with pytest.raises(WrongPassword):
        Repository.open(loc, password=PW)
    with pytest.raises(UsageError):
        remove_key(opened.raw_backend, new_id, None)  # the last key


def test_unreadable_key_files_are_not_a_wrong_password(enc: Repository) -> None:
    """When no key file can even be read (cut short, not JSON), no password could open the
    repository: the error says that and names them (exit 13), not "wrong password" (exit 12),
    which would send the administrator hunting for another passphrase.  A readable key file
    beside them is still tried, and a password it refuses is still a wrong password."""
    from vmkeep.storage.errors import KeysUnreadable

    loc = enc.backend.location
    assert enc.master is not None
    second = add_key(enc.raw_backend, enc.master, "second")
    first = Path(loc, "keys", enc.key_id or "")
    first.write_bytes(first.read_bytes()[:40])  # cut short
    assert Repository.open(loc, password="second").key_id == second
    with pytest.raises(WrongPassword):
        Repository.open(loc, password=PW)
    Path(loc, "keys", second).write_bytes(b"")
    with pytest.raises(KeysUnreadable) as err:
        Repository.open(loc, password=PW)
    assert err.value.exit_code == 13
    assert (enc.key_id or "")[:12] in err.value.get_message()
    assert second[:12] in err.value.get_message()


def test_prune_repacks_encrypted_packs(enc: Repository, tmp_path: Path) -> None:
    img = write_image(tmp_path / "a.img", seed=4)
    p1, _ = backup(enc, img)
    scribble(img, [(0, 400_000)], seed=9)
    p2, _ = backup(enc, img)
    forget_ids(enc, [p1.id])
    report = prune(enc, grace=__import__("datetime").timedelta(0), repack_below=0.95)
    assert report.packs_deleted > 0
    fresh = Repository.open(enc.backend.location, password=PW)
    assert check_repository(fresh, read_data=True).ok
    assert restored_sha(fresh, p2.id, tmp_path) == sha(img)


def test_chunk_ids_differ_between_repositories(enc: Repository, tmp_path: Path) -> None:
    other = Repository.init(str(tmp_path / "other"), password=PW)
    data = os.urandom(1000)
    assert enc.hasher.chunk_id(data) != other.hasher.chunk_id(data)
