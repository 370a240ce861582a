"""Which options are secrets, and where file-source credentials come from (#24 item 1)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmkeep.errors import InputError
from vmkeep.storage.secret_options import refuse_secrets, secret_keys
from vmkeep.tasks import source_credentials
from vmkeep.tasks.source_credentials import source_options

CANARY = "CANARY-options-5f1e"


def test_secret_keys_are_found_in_nested_options() -> None:
    options = {
        "username": "backup",
        "password": CANARY,
        "key_filename": "/etc/vmkeep/id_ed25519",  # a path, not a secret
        "port": 445,
        "client_kwargs": {"aws_secret_access_key": CANARY, "region_name": "eu"},
        "key": CANARY,
        "secret": CANARY,
        "token": CANARY,
        "account_key": CANARY,
        "passphrase": CANARY,
        "use_ssl": True,
    }
    assert sorted(secret_keys(options)) == [
        "account_key",
        "client_kwargs.aws_secret_access_key",
        "key",
        "passphrase",
        "password",
        "secret",
        "token",
    ]
    assert secret_keys({"password": None, "timeout": 10}) == []


def test_refusal_names_the_option_never_its_value() -> None:
    with pytest.raises(InputError) as err:
        refuse_secrets({"password": CANARY}, "storage_options")
    assert "storage_options" in str(err.value) and "password" in str(err.value)
    assert CANARY not in str(err.value) and err.value.exit_code == 14


def test_source_password_is_read_inside_the_task(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("VMKEEP_SOURCE_PASSWORD", raising=False)
    monkeypatch.delenv("VMKEEP_SOURCE_PASSWORD_FILE", raising=False)
    monkeypatch.setenv("VMKEEP_SOURCE_KEY_FILE", "/k")
    monkeypatch.setattr(source_credentials, "in_prefect_run", lambda: False)
    url = "sftp://backup@guest/srv"
    assert source_options(url) == {"key_filename": "/k"}
    assert source_options("/srv/data") == {}  # local sources need nothing
    monkeypatch.setenv("VMKEEP_SOURCE_PASSWORD", CANARY)
    assert source_options(url, {"timeout": 5}) == {
        "timeout": 5,
        "password": CANARY,
        "key_filename": "/k",
    }
    secret = tmp_path / "pw"
    secret.write_text("from-a-file\n")
    secret.chmod(0o600)
    assert source_options(url, password_file=str(secret))["password"] == "from-a-file"
    monkeypatch.delenv("VMKEEP_SOURCE_PASSWORD")
    monkeypatch.setenv("VMKEEP_SOURCE_PASSWORD_FILE", str(secret))
    assert source_options("smb://u@host/share")["password"] == "from-a-file"


def test_secret_options_are_refused_under_prefect(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under Prefect the parameter is recorded: refuse it; direct library calls may pass it."""
    url = "smb://u@host/share"
    assert source_options(url, {"password": CANARY})["password"] == CANARY
    monkeypatch.setattr(source_credentials, "in_prefect_run", lambda: True)
    with pytest.raises(InputError, match="source_options holds secret option"):
        source_options(url, {"password": CANARY})
    with pytest.raises(InputError, match="target_options"):
        source_credentials.refuse_secret_parameters(target_options={"password": CANARY})
    source_credentials.refuse_secret_parameters(storage_options={"port": 22}, other=None)


def test_urls_with_a_password_are_refused(tmp_path: Path) -> None:
    """``sftp://user:pw@host`` would put the password in argv, parameters and logs."""
    from tests.restore.restore_helpers import run_cli

    code, out, err = run_cli(
        "backup", "files", f"sftp://u:{CANARY}@127.0.0.1/srv", "--name", "x",
        repo=tmp_path / "repo",
    )
    assert code == 14 and "SOURCE" in err and CANARY not in out + err
    code, out, err = run_cli("list", repo=f"sftp://u:{CANARY}@127.0.0.1/repo")
    assert code == 14 and "--repo" in err and CANARY not in out + err
    with pytest.raises(InputError) as exc:
        source_credentials.refuse_secret_parameters(repo=f"smb://u:{CANARY}@nas/share")
    assert CANARY not in str(exc.value)
    source_credentials.refuse_secret_parameters(repo="smb://u@nas/share", target="/tmp/x")
