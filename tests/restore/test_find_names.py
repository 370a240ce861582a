"""``find`` with names that are not UTF-8 or hold backslashes: the catalog's text form is
reversible, a pattern with such bytes searches instead of failing (and a pattern RE2 refuses is
a usage error), and every ``ref`` ``find``
prints restores exactly the file it names — for image points (catalogs, also version-1 ones)
and file points alike."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.disks import disk_builders as b
from tests.restore.restore_helpers import run_cli, vmkeep_json
from vmkeep.browse.catalog import (
    _v1_path,
    catalog_key,
    decode_catalog,
    encode_catalog,
    path_text,
    text_path,
)
from vmkeep.storage.repository import Repository

#: names a guest may hold: Latin-1 leftovers, a broken sequence, backslashes (systemd's unit
#: names), a name that looks like an escape, plain non-ASCII
NAMES = [b"caf\xe9.txt", b"\xff\xfe", b"dev-disk-by\\x2duuid.swap", b"lit\\udce9",
         b"back\\\\slash", "日本.txt".encode()]

_chars = st.one_of(
    st.integers(0xDC80, 0xDCFF),  # bytes kept by surrogateescape
    st.integers(0xD800, 0xDFFF),  # NTFS's unpaired UTF-16 surrogates
    st.sampled_from([ord(c) for c in "\\xudc0a9f"]),
    st.integers(0x20, 0x10FFFF),
).map(chr)


@given(st.lists(_chars, max_size=20).map("".join))
def test_the_text_form_is_valid_utf8_and_reverses_exactly(name: str) -> None:
    text = path_text(name)
    text.encode("utf-8")  # storable in a Parquet string column
    assert text_path(text) == name


def test_a_version_1_path_is_read_into_the_current_form() -> None:
    assert _v1_path("caf\\udce9.txt") == "caf\\xe9.txt"
    assert text_path(_v1_path("caf\\udce9.txt")) == "caf\udce9.txt"
    assert text_path(_v1_path("a\\b")) == "a\\b"
    assert _v1_path("plain") == "plain"


def _tree(root: Path) -> dict[bytes, bytes]:
    root.mkdir()
    os.mkdir(os.fsencode(root) + b"/d\xe4")
    files = {b"d\xe4/" + name: b"content of " + name for name in NAMES}
    for rel, data in files.items():
        with open(os.fsencode(root) + b"/" + rel, "wb") as f:
            f.write(data)
    return files


def _refs_restore_exactly(repo: Path, found: dict, files: dict[bytes, bytes], tmp: Path) -> None:
    by_path = {os.fsencode(m["path"]).lstrip(b"/"): m["ref"] for m in found["matches"]
               if m["type"] == "file"}
    assert set(by_path) == set(files)
    for n, (rel, ref) in enumerate(sorted(by_path.items())):
        out = tmp / f"out{n}"
        code, _out, err = run_cli("restore", "files", ref, "--to", str(out), repo=repo)
        assert code == 0, (ref, err)
        [restored] = [p for p in out.rglob("*") if p.is_file()]
        assert os.fsencode(restored.name) == rel.rsplit(b"/", 1)[1]
        assert restored.read_bytes() == files[rel]


def _backed_up(tmp_path: Path, *init: str) -> tuple[Path, dict[bytes, bytes], Path, str]:
    """The tree (its source folder and files) in an ext4 image, backed up into a repository
    made by ``init INIT``: (src, files, repo, point id)."""
    src = tmp_path / "src"
    files = _tree(src)
    img = tmp_path / "names.img"
    b.mkfs_ext4(src, img)
    repo = tmp_path / "repo"
    vmkeep_json("init", *init, repo=repo)
    point = vmkeep_json("backup", "image", str(img), "--name", "img", repo=repo)["id"]
    return src, files, repo, point


def test_every_ref_find_prints_restores_its_file(tmp_path: Path) -> None:
    src, files, repo, image_point = _backed_up(tmp_path)
    found = vmkeep_json("find", "*", "--name", "img", repo=repo)
    for m in found["matches"]:  # the ref is the volume and the name itself
        assert m["ref"] == f"{image_point[:8]}:disk0-whole{m['path']}"
    image_matches = {**found, "matches": [m for m in found["matches"]
                                           if not m["path"].startswith("/lost+found")]}
    _refs_restore_exactly(repo, image_matches, files, tmp_path / "image")

    code, out, err = run_cli("find", os.fsdecode(b"caf\xe9*"), repo=repo)  # bytes from the shell
    assert code == 0, err
    [line] = out.splitlines()  # shown as ``ls`` shows it
    assert line.startswith(f"{image_point[:8]}:disk0-whole/d\\xe4/caf\\xe9.txt  file ")
    code, out, err = run_cli("find", "[z-a]*", repo=repo)  # RE2 refuses the class
    assert code == 2 and "not a valid pattern: '[z-a]*'" in err and "Traceback" not in err, err
    code, out, err = run_cli("find", "*x2duuid*", repo=repo)
    assert code == 0 and "disk0-whole/d\\xe4/dev-disk-by\\\\x2duuid.swap" in out, (out, err)
    backslashes = vmkeep_json("find", "back\\\\slash", repo=repo)["matches"]
    assert [m["path"] for m in backslashes] == ["/d\udce4/back\\\\slash"]

    # a catalog written by version 1 (undecodable bytes as ``\udcNN``, backslashes as they are)
    repository = Repository.open(str(repo))
    key = catalog_key(image_point)
    table = decode_catalog(repository.backend.get(key), image_point)
    v1 = table
    for column in ("path", "name"):
        v1_text = [text_path(p).encode("utf-8", "backslashreplace").decode()
                   for p in table.column(column).to_pylist()]
        v1 = v1.set_column(table.schema.get_field_index(column), column,
                           pa.array(v1_text, pa.string()))
    assert "/d\\udce4/caf\\udce9.txt" in v1.column("path").to_pylist()
    meta = json.loads(table.schema.metadata[b"vmkeep"])
    v1 = v1.replace_schema_metadata({b"vmkeep": json.dumps({**meta, "version": 1}).encode()})
    repository.backend.delete(key)
    repository.backend.put(key, encode_catalog(v1))
    again = vmkeep_json("find", "*", "--name", "img", repo=repo)
    assert again["catalogs_built"] == []
    # the same refs, but for version 1's ambiguity: a name spelling an escape reads as the byte
    literal = f"{image_point[:8]}:disk0-whole/d\udce4/lit\\udce9"
    want = {m["ref"] for m in found["matches"]} - {literal} | {literal.replace("\\udce9",
                                                                              "\udce9")}
    assert {m["ref"] for m in again["matches"]} == want

    vmkeep_json("backup", "files", str(src), "--name", "files", repo=repo)
    found = vmkeep_json("find", "*", "--name", "files", repo=repo)
    _refs_restore_exactly(repo, found, files, tmp_path / "files")


@pytest.mark.parametrize("encrypted", [False, True], ids=["plaintext", "encrypted"])
def test_a_damaged_catalog_is_reported_by_check_and_built_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encrypted: bool
) -> None:
    """A catalog object damaged on the target (one flipped bit on a NAS) fails neither ``find``
    nor ``diff``: on a plaintext target its page checksums tell (before, a flipped bit could
    read as other names), an encrypted one fails its authentication (before, ``find`` failed
    with it).  ``check`` reports it (a warning: no backup data is lost) and the next ``find``
    builds it again, replacing the damaged object."""
    monkeypatch.setenv("VMKEEP_PASSWORD", "catalog test")
    _src, files, repo, point = _backed_up(tmp_path, *(["--encrypt"] if encrypted else []))
    good = vmkeep_json("find", "*.txt", repo=repo)["matches"]
    assert len(good) == 2
    stored = repo / catalog_key(point)
    data = bytearray(stored.read_bytes())
    data[30] ^= 0x10  # inside the first page (after the 4-byte magic and the page header)
    stored.write_bytes(bytes(data))

    checked = vmkeep_json("check", repo=repo)
    assert checked["ok"] and checked["problems"] == []
    [warning] = checked["warnings"]
    assert catalog_key(point) in warning and point[:12] in warning, warning

    code, out, err = run_cli("find", "*.txt", "--json", repo=repo)
    assert code == 0, err
    assert json.loads(out)["matches"] == good
    assert json.loads(out)["catalogs_built"] == [point]
    assert f"building it again from restore point {point[:8]}" in err
    assert stored.read_bytes() != bytes(data)  # replaced
    assert vmkeep_json("check", repo=repo)["warnings"] == []
    code, out, err = run_cli("diff", point, point, repo=repo)
    assert code == 0 and "catalog" not in err, err
    assert len(files) == len(NAMES)


def test_a_catalog_of_a_newer_version_is_searched_around_and_left(tmp_path: Path) -> None:
    """A catalog a newer vmkeep wrote is not this client's to replace: ``find`` reads the point
    itself (saying so) and leaves the object as it is; ``check`` has nothing to say about it."""
    _src, _files, repo, point = _backed_up(tmp_path)
    good = vmkeep_json("find", "*.txt", repo=repo)["matches"]
    repository = Repository.open(str(repo))
    key = catalog_key(point)
    table = decode_catalog(repository.backend.get(key), point)
    meta = json.loads(table.schema.metadata[b"vmkeep"])
    newer = encode_catalog(table.replace_schema_metadata(
        {b"vmkeep": json.dumps({**meta, "version": 99}).encode()}))
    repository.backend.delete(key)
    repository.backend.put(key, newer)
    code, out, err = run_cli("find", "*.txt", "--json", repo=repo)
    assert code == 0, err
    assert json.loads(out)["matches"] == good and json.loads(out)["catalogs_built"] == []
    assert "version 99" in err and f"reading restore point {point[:8]} itself" in err
    assert repository.backend.get(key) == newer
    assert vmkeep_json("check", repo=repo)["warnings"] == []


def test_check_warns_of_unreadable_verification_and_protection_records(tmp_path: Path) -> None:
    """Records kept beside a point hold no backup data, so ``check`` calls one that cannot be
    read a warning (exit 0), with what it means: a damaged protection record still protects,
    a damaged verification record no longer counts.  Orphans are prune's, not check's."""
    from vmkeep.storage import verifications

    _src, _files, repo, point = _backed_up(tmp_path)
    repository = Repository.open(str(repo))
    record = verifications.record(repository, point, "fs", True, {"volumes": []})
    vmkeep_json("protect", point, repo=repo)
    assert vmkeep_json("check", repo=repo)["warnings"] == []
    (repo / record).write_bytes(b"{cut short")
    (repo / "protected" / point).write_bytes(b"\x00 not JSON")
    checked = vmkeep_json("check", repo=repo)
    assert checked["ok"]
    record_warning, protection_warning = checked["warnings"]
    assert record in record_warning and "unreadable verification record" in record_warning
    assert f"protected/{point}" in protection_warning
    assert "stays protected" in protection_warning
    code, _out, err = run_cli("check", repo=repo)
    assert code == 0 and err.count("stays protected") == 1, err  # said once, not logged too
