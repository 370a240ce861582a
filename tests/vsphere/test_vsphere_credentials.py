"""Credentials never show their password."""

from __future__ import annotations

import copy
import logging
import os
import pickle
import traceback

import pytest

from vmkeep.errors import InputError
from vmkeep.vsphere.credentials import Credentials, from_env, from_file

CANARY = "CANARY-s3cret-pw-7f3a"


def test_repr_str_format_hide_password(caplog: pytest.LogCaptureFixture) -> None:
    creds = Credentials("administrator@vsphere.local", CANARY)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("test").info("creds %s %r", creds, creds)
        logging.getLogger("test").info(f"creds {creds} {creds!r} {creds:>40}")
    for text in (repr(creds), str(creds), f"{creds}", str([creds]), str({"c": creds})):
        assert CANARY not in text
        assert "administrator" in text
    assert CANARY not in caplog.text
    assert creds.reveal() == CANARY


def test_not_picklable_but_copyable() -> None:
    creds = Credentials("u", CANARY)
    with pytest.raises(TypeError):
        pickle.dumps(creds)
    assert copy.deepcopy(creds) == creds


def test_exception_carrying_credentials_does_not_leak() -> None:
    creds = Credentials("u", CANARY)
    try:
        raise RuntimeError(f"failed with {creds}")
    except RuntimeError:
        assert CANARY not in traceback.format_exc()


def test_from_env() -> None:
    creds = from_env({"VMKEEP_VC_USER": "u", "VMKEEP_VC_PASSWORD": CANARY})
    assert creds.user == "u" and creds.reveal() == CANARY
    with pytest.raises(InputError):
        from_env({"VMKEEP_VC_PASSWORD": CANARY})
    with pytest.raises(InputError) as info:
        from_env({"VMKEEP_VC_USER": "u"})
    assert CANARY not in str(info.value)


def test_from_file(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "pw")
    with open(path, "w") as f:
        f.write(CANARY + "\nignored\n")
    os.chmod(path, 0o600)
    assert from_file("u", path).reveal() == CANARY
    assert from_env({"VMKEEP_VC_USER": "u", "VMKEEP_VC_PASSWORD_FILE": path}).reveal() == CANARY
    os.chmod(path, 0o644)
    with pytest.raises(InputError, match="chmod"):
        from_file("u", path)
    assert from_file("u", path, strict_mode=False).reveal() == CANARY
    with pytest.raises(InputError) as info:
        from_file("u", os.path.join(tmp_path, "missing"))
    assert CANARY not in str(info.value)


def test_user_option_wins_over_a_missing_env_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--user`` with the password in VMKEEP_VC_PASSWORD (issue 19: --user was ignored and the
    run failed asking for VMKEEP_VC_USER)."""
    creds = from_env({"VMKEEP_VC_PASSWORD": CANARY}, user="admin")
    assert creds.user == "admin" and creds.reveal() == CANARY
    assert from_env({"VMKEEP_VC_USER": "env", "VMKEEP_VC_PASSWORD": CANARY}, "cli").user == "cli"
    from vmkeep.tasks.vcenter import resolve_credentials

    monkeypatch.delenv("VMKEEP_VC_USER", raising=False)
    monkeypatch.setenv("VMKEEP_VC_PASSWORD", CANARY)
    assert resolve_credentials("admin", None, None).user == "admin"


def test_missing_guest_credentials_name_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from vmkeep.tasks.vcenter import resolve_credentials

    for name in ("VMKEEP_GUEST_USER", "VMKEEP_GUEST_PASSWORD", "VMKEEP_GUEST_PASSWORD_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(InputError) as only_user:
        resolve_credentials("root", None, None, "GUEST")
    said = only_user.value.get_message()
    assert "a password (--guest-password-file" in said and "a user" not in said
    monkeypatch.setenv("VMKEEP_GUEST_PASSWORD", CANARY)
    with pytest.raises(InputError, match=r"give a user \(--guest-user or VMKEEP_GUEST_USER\)$"):
        resolve_credentials(None, None, None, "GUEST")
    assert resolve_credentials("root", None, None, "GUEST").user == "root"


def test_a_password_file_that_holds_no_text_says_so(tmp_path: os.PathLike[str]) -> None:
    """Bytes that are not UTF-8 ended in a ``UnicodeDecodeError`` traceback (vCenter, guest and
    file-source password files alike); an empty file logged in with an empty password."""
    for data, says in ((b"\xff\xfe", "not UTF-8 text"), (b"", "empty"), (b"\nx\n", "empty")):
        path = os.path.join(tmp_path, "pw")
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, 0o600)
        with pytest.raises(InputError, match=says) as info:
            from_file("u", path)
        assert info.value.exit_code == 14
