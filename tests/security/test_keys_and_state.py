"""Finding 6 (encryption): rollback state, scrypt bounds, key files tried in turn.

* A junk manifest seen once must not enter the client's rollback record (it did, so every
  later command exited 18 "rolled back" once it was removed).
* A planted key file with n = 2^21 made every open take 14.6 s and 2.2 GB: key files asking more
  than ``init`` writes are refused before the KDF runs.
* ``VMKEEP_SCRYPT_N=2 vmkeep init --encrypt`` wrote a key with n = 2: nothing in the product
  lowers the cost any more (tests patch it in-process, see ``tests/fast_kdf.py``).
* Another repository's key file sorting first (same passphrase) stopped the search.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.security.conftest import PW
from tests.storage.storage_helpers import backup
from vmkeep.storage import crypto
from vmkeep.storage.errors import FormatError, RepositoryRolledBack
from vmkeep.storage.manifest import point_key
from vmkeep.storage.repository import DamagedPoint, Repository


@pytest.fixture(autouse=True)
def own_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VMKEEP_STATE_DIR", str(tmp_path / "state"))


def encrypted(path: Path) -> Repository:
    return Repository.init(str(path), image_chunk_size=64 * 1024, password=PW)


@pytest.mark.parametrize("password", [PW, None], ids=["encrypted", "plain"])
def test_junk_manifest_never_enters_rollback_state(
    tmp_path: Path, image: Path, fast_kdf: int, password: str | None
) -> None:
    repo = Repository.init(str(tmp_path / "r"), image_chunk_size=64 * 1024, password=password)
    good, _ = backup(repo, image)
    junk = "ab" * 32
    junk_path = Path(repo.backend.location, point_key(junk))
    junk_path.write_bytes(os.urandom(2000))
    damaged: list[DamagedPoint] = []
    fresh = Repository.open(repo.backend.location, password=password)
    assert [p.id for p in fresh.list_points(damaged=damaged)] == [good.id]
    assert [d.id for d in damaged] == [junk]
    assert junk not in (fresh.known.load() or pytest.fail("no state")).points
    junk_path.unlink()
    again = Repository.open(repo.backend.location, password=password)
    assert [p.id for p in again.list_points()] == [good.id]  # no RepositoryRolledBack
    Path(repo.backend.location, point_key(good.id)).unlink()  # detection still works
    with pytest.raises(RepositoryRolledBack):
        Repository.open(repo.backend.location, password=password).list_points()


def planted_key(n: int) -> bytes:
    return json.dumps({
        "format": "vmkeep-key", "version": 1, "created": "2026-01-01T00:00:00+00:00",
        "hostname": "attacker", "kdf": "scrypt", "n": n, "r": 8, "p": 1,
        "salt": base64.b64encode(os.urandom(16)).decode(),
        "data": base64.b64encode(os.urandom(60)).decode(),
    }).encode()


def test_expensive_key_file_is_refused_before_the_kdf(
    tmp_path: Path, fast_kdf: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = encrypted(tmp_path / "r")
    Path(repo.backend.location, "keys", "0" * 32).write_bytes(planted_key(1 << 21))
    costs: list[int] = []
    real_kek = crypto._kek

    def counting_kek(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
        costs.append(n)
        return real_kek(password, salt, n, r, p)

    monkeypatch.setattr(crypto, "_kek", counting_kek)
    opened = Repository.open(repo.backend.location, password=PW)
    assert opened.key_id == repo.key_id
    assert costs and max(costs) <= crypto.SCRYPT_N_MAX  # the planted n=2^21 never ran
    with pytest.raises(FormatError, match="exceed what vmkeep writes"):
        crypto.unwrap_key(planted_key(1 << 21), PW, "keys/planted")
    for bad in ({"n": 1000}, {"r": 32}, {"p": 16}, {"n": "32768"}, {"n": True}):
        body = json.loads(planted_key(1024)) | bad
        with pytest.raises(FormatError):
            crypto.unwrap_key(json.dumps(body).encode(), PW, "keys/planted")


def test_another_repositorys_key_sorting_first_does_not_stop_the_search(
    tmp_path: Path, image: Path, fast_kdf: int
) -> None:
    mine, theirs = encrypted(tmp_path / "mine"), encrypted(tmp_path / "theirs")
    backup(mine, image)
    assert theirs.key_id is not None and mine.key_id is not None
    keys = Path(mine.backend.location, "keys")
    shutil.copy(Path(theirs.backend.location, "keys", theirs.key_id), keys / ("0" * 32))
    (keys / ("1" * 32)).write_bytes(b"not a key file")  # malformed: skipped too
    (keys / ("2" * 32)).write_bytes(b" " * (crypto.MAX_KEY_FILE + 1))  # too large: not read
    opened = Repository.open(mine.backend.location, password=PW)
    assert opened.key_id == mine.key_id
    assert len(opened.list_points()) == 1


def test_scrypt_cost_cannot_be_lowered_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VMKEEP_SCRYPT_N", "2")
    repo = encrypted(tmp_path / "lib")
    assert repo.key_id is not None
    key = json.loads(Path(repo.backend.location, "keys", repo.key_id).read_bytes())
    assert key["n"] == crypto.SCRYPT_N == 1 << 15
    env = dict(os.environ, VMKEEP_SCRYPT_N="2", VMKEEP_PASSWORD=PW, PREFECT_API_URL="",
               VMKEEP_REPO=str(tmp_path / "cli"))
    out = subprocess.run([sys.executable, "-m", "vmkeep.cli", "init", "--encrypt"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (written,) = (tmp_path / "cli" / "keys").iterdir()
    assert json.loads(written.read_bytes())["n"] == 1 << 15
