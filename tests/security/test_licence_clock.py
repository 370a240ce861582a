"""Regression (#24 item 5): ``VMKEEP_FAKE_NOW`` made an expired or not-yet-valid licence pass and
moved prune's grace cutoff and lock staleness.  An installed vmkeep reads the real clock only;
tests move it in-process (``clock.frozen``, ``tests.support.run_cli``)."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from tests.licensing.licensing_devkeys import write_licence
from tests.security.licence_helpers import back_up_image, make_image, new_repo, real_cli
from tests.support.run_cli import VMKEEP, cli_env
from vmkeep import clock
from vmkeep.licensing.errors import LicenceRefused
from vmkeep.storage.locks import SHARED, acquire, list_locks
from vmkeep.storage.repository import Repository

PAST, FUTURE = "2020-06-01T12:00:00+00:00", "2099-06-01T12:00:00+00:00"


@pytest.mark.parametrize("fake", [PAST, FUTURE])
def test_env_clock_is_ignored_in_process(fake: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMKEEP_FAKE_NOW", fake)
    monkeypatch.setenv("VMKEEP_TEST_NOW", fake)
    assert abs(clock.now() - datetime.now(UTC)) < timedelta(minutes=5)


def test_env_clock_does_not_make_an_expired_licence_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dev_trusted: None
) -> None:
    expired = write_licence(tmp_path / "old.json", issued=date(2020, 1, 1),
                            expires=date(2021, 1, 1), esx_5seat_addon=100)
    monkeypatch.setenv("VMKEEP_LICENSE", str(expired))
    monkeypatch.setenv("VMKEEP_FAKE_NOW", PAST)
    repo = new_repo(tmp_path / "repo")
    with pytest.raises(LicenceRefused, match="expired on 2021-01-01"):
        back_up_image(repo, make_image(tmp_path / "disk.img", 1))
    future = write_licence(tmp_path / "new.json", issued=date(2098, 1, 1),
                           expires=date(2099, 12, 31), esx_5seat_addon=100)
    monkeypatch.setenv("VMKEEP_LICENSE", str(future))
    monkeypatch.setenv("VMKEEP_FAKE_NOW", FUTURE)
    with pytest.raises(LicenceRefused, match="not valid before 2098-01-01"):
        back_up_image(repo, make_image(tmp_path / "disk.img", 1))


def test_installed_cli_ignores_the_env_clock(tmp_path: Path) -> None:
    status = real_cli("license", "status", "--json", VMKEEP_FAKE_NOW=PAST)
    checked = datetime.fromisoformat(json.loads(status.stdout)["checked_at"])
    assert abs(checked - datetime.now(UTC)) < timedelta(minutes=10)


def test_env_clock_does_not_make_locks_stale(tmp_path: Path) -> None:
    """A fresh lock of a holder that is gone is not stale yet (30 minutes); a far-future fake
    clock in the environment must not let ``unlock`` remove it early."""
    import subprocess

    repo = Repository.open(new_repo(tmp_path / "repo"))
    lock = acquire(repo.backend, SHARED, command="backup")
    gone = subprocess.Popen(["true"])
    gone.wait()
    doc = json.loads(repo.backend.get(lock.info.key))
    repo.backend.put(lock.info.key, json.dumps(dict(doc, pid=gone.pid)).encode())
    unlock = real_cli("unlock", "--json", VMKEEP_REPO=repo.backend.location,
                      VMKEEP_FAKE_NOW=FUTURE)
    assert unlock.returncode == 0, unlock.stderr
    assert json.loads(unlock.stdout)["removed"] == []
    assert len(list_locks(repo.backend)) == 1
    lock.release()


def test_the_test_runner_still_moves_the_clock(tmp_path: Path) -> None:
    """The test-only mechanism (tests.support.run_cli) keeps working for the suite."""
    import subprocess

    proc = subprocess.run([*VMKEEP, "license", "status", "--json"], capture_output=True,
                          text=True, env=cli_env(VMKEEP_TEST_NOW=PAST), timeout=300)
    assert json.loads(proc.stdout)["checked_at"].startswith("2020-06-01")
