"""The one settings object: every VMKEEP_* variable typed, empty = unset, errors name the
variable but never its value, and docs/settings.md is its table."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmkeep.errors import UsageError
from vmkeep.settings import settings, table
from vmkeep.settings_model import Settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("VMKEEP_"):
            monkeypatch.delenv(name)


def test_defaults_without_variables() -> None:
    s = settings()
    assert s.repo is None and s.password is None and s.lock_wait is None
    assert s.direct_io is True and s.target_timeout == 120.0


def test_variables_are_typed_and_read_again_when_they_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VMKEEP_REPO", "sftp://nas/backup")
    monkeypatch.setenv("VMKEEP_LOCK_WAIT", "2.5")
    monkeypatch.setenv("VMKEEP_DIRECT_IO", "0")
    monkeypatch.setenv("VMKEEP_STATE_DIR", "/var/lib/vmkeep")
    s = settings()
    assert (s.repo, s.lock_wait, s.direct_io) == ("sftp://nas/backup", 2.5, False)
    assert s.state_dir == Path("/var/lib/vmkeep")
    assert settings() is s  # unchanged environment: the same object
    monkeypatch.setenv("VMKEEP_DIRECT_IO", "1")
    assert settings().direct_io is True


def test_empty_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMKEEP_PASSWORD", "")
    monkeypatch.setenv("VMKEEP_TARGET_TIMEOUT", "")
    assert settings().password is None and settings().target_timeout == 120.0


def test_blank_variables_count_as_unset_but_a_blank_password_is_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``VMKEEP_TAPE_DIR=" "`` made a folder named by a space in the current one."""
    monkeypatch.setenv("VMKEEP_TAPE_DIR", " ")
    monkeypatch.setenv("VMKEEP_STATE_DIR", "\t")
    monkeypatch.setenv("VMKEEP_LOCK_WAIT", "  ")
    monkeypatch.setenv("VMKEEP_PASSWORD", "  ")
    s = settings()
    assert (s.tape_dir, s.state_dir, s.lock_wait) == (None, None, None)
    assert s.password is not None and s.password.get_secret_value() == "  "


def test_secrets_stay_out_of_repr_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    canary = "canary-3f9c1e"
    monkeypatch.setenv("VMKEEP_VC_PASSWORD", canary)
    s = settings()
    assert canary not in repr(s) and canary not in str(s)
    assert s.secret("vc_password") == canary and s.secret("guest_password") is None
    monkeypatch.setenv("VMKEEP_LOCK_WAIT", canary)  # malformed: named, value not shown
    with pytest.raises(UsageError) as info:
        settings()
    assert "VMKEEP_LOCK_WAIT" in str(info.value) and canary not in str(info.value)
    monkeypatch.setenv("VMKEEP_LOCK_WAIT", "-1")
    with pytest.raises(UsageError, match="VMKEEP_LOCK_WAIT"):
        settings()


def test_unknown_vmkeep_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMKEEP_NO_SUCH_THING", "x")
    assert settings().repo is None


def test_docs_settings_md_is_the_table_of_the_class() -> None:
    doc = (ROOT / "docs" / "settings.md").read_text()
    regenerate = "uv run python -c 'from vmkeep.settings import table; print(table())'"
    assert table() in doc, regenerate
    assert len(Settings.model_fields) >= 32
