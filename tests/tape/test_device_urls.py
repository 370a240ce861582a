"""Tape device URLs are checked when a library is added, not at its first use: a port that is
no number or a broken IPv6 address ended ``tape inventory`` in a ``ValueError`` traceback, and
``tape library add`` stored any text."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.restore.restore_helpers import run_cli
from vmkeep.errors import UsageError
from vmkeep.scsi.transport import check_device_url


@pytest.mark.parametrize(("url", "says"), [
    ("iscsi://h:abc/iqn.x/0", "Port could not be cast"),
    ("iscsi://[::1/iqn.x/0", "Invalid IPv6"),
    ("iscsi://h/iqn.x", "want iscsi://host"),
    ("garbage", "unknown SCSI device URL"),
    ("sg://", "unknown SCSI device URL"),
])
def test_bad_device_urls_are_usage_errors(url: str, says: str) -> None:
    with pytest.raises(UsageError, match=says.replace("[", r"\[")):
        check_device_url(url)


def test_good_device_urls_pass() -> None:
    check_device_url("iscsi://127.0.0.1:3260/iqn.2026-12.lab:tape/0")
    check_device_url("iscsi://[fd00::5]/iqn.2026-12.lab:tape/1")
    check_device_url("sg:///dev/sg3")


def test_library_add_refuses_a_bad_url_and_stores_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMKEEP_TAPE_DIR", str(tmp_path / "tape"))
    code, _out, err = run_cli("tape", "library", "add", "L1", "--url", "iscsi://h:abc/iqn.x",
                              "--changer-lun", "0", "--drive-lun", "1")
    assert code == 2 and "Port could not be cast" in err, err
    code, _out, err = run_cli("tape", "inventory", "-l", "L1")
    assert "is not configured" in err, err


def test_library_definitions_live_in_the_configuration_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``VMKEEP_CONFIG_DIR`` moves the tape library definitions too (the settings table says
    ``VMKEEP_CONFIG_DIR/tape``; they stayed in ``~/.config/vmkeep/tape``); ``VMKEEP_TAPE_DIR``
    moves them alone."""
    from vmkeep.tape.library import tape_dir

    monkeypatch.delenv("VMKEEP_TAPE_DIR", raising=False)
    monkeypatch.setenv("VMKEEP_CONFIG_DIR", str(tmp_path / "config"))
    assert tape_dir() == tmp_path / "config" / "tape"
    monkeypatch.setenv("VMKEEP_TAPE_DIR", str(tmp_path / "elsewhere"))
    assert tape_dir() == tmp_path / "elsewhere"


def test_a_damaged_library_definition_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A definition file cut short was a ``JSONDecodeError`` traceback; it is a damaged tape
    file (exit 14), as the pools and cartridge state are."""
    monkeypatch.setenv("VMKEEP_TAPE_DIR", str(tmp_path / "tape"))
    (tmp_path / "tape" / "libraries").mkdir(parents=True)
    (tmp_path / "tape" / "libraries" / "L1.json").write_text('{"name": "L1", "chan')
    code, _out, err = run_cli("tape", "inventory", "-l", "L1")
    assert code == 14 and "cannot be read" in err and "tape library add" in err, err
