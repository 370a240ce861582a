"""Tape configuration (library definitions, media pools, cartridge state) from the command
line and from files a crash or an editor damaged.  Before: ``tape library add ../../x`` wrote
``x.json`` two folders above the tape folder, ``''`` made a library and a pool with no name,
a negative retention was taken, and a damaged ``pools.json`` or cartridge state ended every
tape command in a ``JSONDecodeError`` or ``AttributeError`` traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.restore.restore_helpers import run_cli
from vmkeep.tape.errors import TapeConfigUnreadable
from vmkeep.tape.library import Library, LibraryConfig

CHANGER, DRIVE = "sg:///dev/sg0", "sg:///dev/sg1"


@pytest.fixture
def tape_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    where = tmp_path / "config" / "tape"
    monkeypatch.setenv("VMKEEP_TAPE_DIR", str(where))
    return where


@pytest.mark.parametrize(("name", "says"), [
    ("../../escape", "holds a '/'"), ("", "is empty"), ("  ", "is empty"), ("a\\b", "holds"),
    ("tab\there", "holds a '/', '\\' or a control character"),
    (".hidden", "begins with '.'"), ("x" * 65, "is longer than 64"),
])
def test_library_and_pool_names_are_one_plain_name(tape_dir: Path, name: str, says: str) -> None:
    code, _out, err = run_cli("tape", "library", "add", name, "--changer", CHANGER,
                              "--drive", DRIVE)
    assert code == 2 and f"tape library name {name!r} {says}" in err, err
    code, _out, err = run_cli("tape", "pool", "add", name)
    assert code == 2 and f"tape pool name {name!r} {says}" in err, err
    code, _out, err = run_cli("tape", "label", "--library", "L1", "C0001", "--pool", name)
    assert code == 2 and "tape pool name" in err, err
    assert not tape_dir.parent.parent.joinpath("escape.json").exists()
    assert not (tape_dir / "pools.json").exists()
    assert not (tape_dir / "libraries").exists() or not list((tape_dir / "libraries").iterdir())


def test_a_negative_retention_is_refused(tape_dir: Path) -> None:
    code, _out, err = run_cli("tape", "pool", "add", "daily", "--retention-days", "-5")
    assert code == 2 and "the retention cannot be negative" in err, err
    assert run_cli("tape", "pool", "add", "scratch", "--retention-days", "0")[0] == 0


def test_a_retention_beyond_any_date_is_refused(tape_dir: Path) -> None:
    """Its cartridges' expiry (now + retention) would be no date: a traceback at the first copy
    (OverflowError), or a damaged pools file read back."""
    code, _out, err = run_cli("tape", "pool", "add", "forever", "--retention-days", "99999999999")
    assert code == 2 and "beyond any date; at most 36500" in err, err
    assert run_cli("tape", "pool", "add", "century", "--retention-days", "36500")[0] == 0
    (tape_dir / "pools.json").write_text('{"forever": {"retention_days": 99999999999}}')
    code, _out, err = run_cli("tape", "pool", "add", "daily", "--retention-days", "7")
    assert code == 14 and "pool 'forever': retention 99999999999 days" in err, err


@pytest.mark.parametrize(
    "content", ["garbage", '{"daily": 5}', "[1]", '{"daily": {"retention_days": "x"}}',
                '{"daily": {"retention_days": -3}}'])
def test_a_damaged_pools_file_is_named_not_a_traceback(tape_dir: Path, content: str) -> None:
    tape_dir.mkdir(parents=True)
    (tape_dir / "pools.json").write_text(content)
    code, _out, err = run_cli("tape", "pool", "add", "weekly", "--retention-days", "35")
    assert code == 14 and "the media pools in" in err and "pools.json cannot be read" in err, err
    assert "Traceback" not in err
    assert (tape_dir / "pools.json").read_text() == content  # left for the administrator


@pytest.mark.parametrize("content", ["{\"C0001\": {\"barcode\": ", "[]",
                                     '{"C0001": {"no_such_field": 1}}'])
def test_a_damaged_cartridge_state_is_never_taken_for_an_empty_one(
    tape_dir: Path, content: str
) -> None:
    """The state holds each cartridge's retention: read as empty, every cartridge would be
    new, and a job could label or overwrite cartridges still to be kept."""
    LibraryConfig("L1", CHANGER, [DRIVE]).save()
    (tape_dir / "media").mkdir(parents=True)
    (tape_dir / "media" / "L1.json").write_text(content)
    lib = Library.open("L1")
    for read in (lib.media, lambda: lib.update_media("C0001", full=True)):
        with pytest.raises(TapeConfigUnreadable) as caught:
            read()
        assert caught.value.exit_code == 14
        assert "the cartridge state of library 'L1'" in caught.value.get_message()
    assert (tape_dir / "media" / "L1.json").read_text() == content


@pytest.mark.parametrize("content", ["garbage", "[]", '{"name": "L1"}', '{"name": "L1", '
                                     '"changer": "x", "drives": "iscsi://h/iqn/1"}'])
def test_a_damaged_library_definition_is_named_like_the_other_tape_files(
    tape_dir: Path, content: str
) -> None:
    """Exit 14 naming the file and the fix, as damaged pools and cartridge state are (it was a
    usage error, exit 2, and a string of drives was taken letter by letter for drive URLs)."""
    (tape_dir / "libraries").mkdir(parents=True)
    (tape_dir / "libraries" / "L1.json").write_text(content)
    code, _out, err = run_cli("tape", "inventory", "--library", "L1")
    assert code == 14, (code, err)
    assert "the definition of library 'L1' in" in err and "L1.json cannot be read" in err, err
    assert "vmkeep tape library add" in err and "Traceback" not in err
    assert (tape_dir / "libraries" / "L1.json").read_text() == content
