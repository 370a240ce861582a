"""Option values refused by the parser before anything runs, as usage errors (exit 2) naming the
option: numbers out of range — not a job spec's "bad input" (exit 14) naming an internal field,
and not a negative index that Python would count from the end — and empty paths, which
``Path("")`` would quietly take for the current folder (``mount p ""`` mounted on it when it was
empty, ``restore image --to ""`` said "." is a folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from vmkeep.cli.main import app, register_all

VC = ["--vcenter", "https://127.0.0.1:1"]

OUT_OF_RANGE = [
    (["rpo", "--max-age", "0"], "--max-age"),
    (["rpo", "--max-age", "-5"], "--max-age"),
    (["rpo", "--max-age", "nan"], "--max-age"),
    (["sweep", *VC, "--older-than", "-1"], "--older-than"),
    (["verify", "boot", "p@latest", "--timeout", "-1"], "--timeout"),
    (["verify", "boot", "p@latest", "--timeout", "inf"], "--timeout"),
    (["verify", "fs", "p@latest", "--timeout", "0"], "--timeout"),
    (["restore", "image", "p@latest", "--disk", "-1", "--to", "out.img"], "--disk"),
    (["export", "p@latest", "--nbd", "--disk", "-1"], "--disk"),
    (["tape", "restore-image", "-l", "lib", "p@latest", "--disk", "-1", "--to", "x"], "--disk"),
    (["tape", "load", "-l", "lib", "ABC123L6", "--drive", "-1"], "--drive"),
    (["tape", "unload", "-l", "lib", "--drive", "-1"], "--drive"),
    (["tape", "copy", "-l", "lib", "--all-new", "--drive", "-1"], "--drive"),
    (["backup", "vm", *VC, "--parallel", "0", "vm1", "vm2"], "--parallel"),
    (["backup", "vm", *VC, "--parallel", "65", "vm1", "vm2"], "--parallel"),
    (["doctor", *VC, "--host-timeout", "0"], "--host-timeout"),
    # past these Python's clocks overflow: an OverflowError traceback mid-job
    (["rpo", "--max-age", "1e300"], "--max-age"),
    (["sweep", *VC, "--older-than", "1e300"], "--older-than"),
    (["verify", "fs", "p@latest", "--timeout", "1e300"], "--timeout"),
    (["verify", "boot", "p@latest", "--timeout", "604801"], "--timeout"),
    (["doctor", *VC, "--host-timeout", "1e9"], "--host-timeout"),
]


EMPTY_PATHS = [
    (["mount", "p@latest", ""], "mountpoint"),
    (["restore", "image", "p@latest", "--to", ""], "--to"),
    (["restore", "image", "p@latest", "--to", " "], "--to"),
    (["backup", "image", "", "--name", "n"], "path"),
    (["backup", "image", "a.img", "--name", "n", "--changed-extents", ""], "--changed-extents"),
    (["restore", "files", "p@latest:/x", "--to-guest", "vm:/tmp", *VC,
      "--guest-password-file", ""], "--guest-password-file"),
    (["license", "install", ""], "file"),
    (["license", "plan", ""], "[ENV.json]"),
    (["license", "status", "--catalog", ""], "--catalog"),
    (["serve", "--home", ""], "--home"),
    (["backup", "files", "", "--name", "n"], "source"),
    (["backup", "files", "src", "--name", "n", "--exclude-file", " "], "--exclude-file"),
    (["verify", "yara", "p@latest", "--rules", ""], "--rules"),  # took every rule in '.'
    (["restore", "vm", "p@latest", *VC, "--yara", ""], "--yara"),
    (["verify", "boot", "p@latest", "--expect", "login["], "--expect"),  # was a traceback
    # these were read as not given: the default licence, the system's CAs, a temporary socket
    (["sweep", *VC, "--password-file", ""], "--password-file"),
    (["sweep", *VC, "--cafile", ""], "--cafile"),
    (["serve", "--setup-only", "--cafile", ""], "--cafile"),
    (["license", "status", "--license-file", ""], "--license-file"),
    (["license", "plan", "--vcenter", "vc", "--cafile", " "], "--cafile"),
    (["export", "p@latest", "--nbd", "--socket", ""], "--socket"),
    (["verify", "boot", "p@latest", "--screenshot", ""], "--screenshot"),
]


@pytest.mark.parametrize(("argv", "option"), OUT_OF_RANGE + EMPTY_PATHS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) else v)
def test_a_bad_value_is_a_usage_error_naming_its_option(
    argv: list[str], option: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, value in {"VMKEEP_REPO": str(tmp_path / "repo"), "VMKEEP_PASSWORD": "x",
                        "VMKEEP_STATE_DIR": str(tmp_path / "state"),
                        "VMKEEP_TAPE_DIR": str(tmp_path / "tape"),
                        "VMKEEP_CONFIG_DIR": str(tmp_path / "config"), "PREFECT_API_URL": "",
                        "VMKEEP_VC_USER": "u", "VMKEEP_VC_PASSWORD": "p"}.items():
        monkeypatch.setenv(name, value)
    register_all()
    result = CliRunner().invoke(app, argv, terminal_width=200)
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert f"Invalid value for '{option}'" in result.output, result.output
    assert "Spec" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing is written"


def test_a_path_options_default_passes_through_its_parser() -> None:
    """typer hands a default (``serve --home``'s is a ``Path``) to the parser too."""
    from vmkeep.cli.common import given_path

    assert given_path(Path("/srv/x")) == Path("/srv/x")
    assert given_path("relative/y") == Path("relative/y")


def test_an_empty_variable_is_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only an empty value on the command line is refused: click takes an empty variable for
    an unset one (``VMKEEP_LICENSE=`` means the default licence, as before)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("VMKEEP_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("VMKEEP_LICENSE", "")
    register_all()
    result = CliRunner().invoke(app, ["license", "status", "--json"], terminal_width=200)
    assert result.exit_code != 2, result.output
    assert "Invalid value" not in result.output
