"""File backups from real servers on loopback: sftp:// (OpenSSH sshd) and smb:// (Samba smbd).

Two restore points of a changing tree restore exactly — to a local directory and back into the
"guest" through the same URL — within what each protocol exposes (SFTP: modes, whole-second
mtimes, symlinks; SMB: content and microsecond mtimes).
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.guestfiles.files_helpers import build_tree, change_tree, comparable, snapshot
from tests.servers.smbd_server import SmbServer
from tests.servers.sshd_server import SftpServer
from vmkeep.flows.backup_files import backup_files as backup_flow
from vmkeep.flows.restore_file_point import restore_file_point
from vmkeep.flows.run import run_flow
from vmkeep.storage.file_manifest import load_file_point
from vmkeep.storage.repository import Repository

SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55\n"
pytestmark = pytest.mark.usefixtures("licensed")


def truncate_times(root: Path, resolution_ns: int) -> None:
    """Round every mtime down to what the protocol carries (deepest first: dirs last)."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in [*filenames, *dirnames]:
            p = Path(dirpath) / name
            st = p.lstat()
            t = st.st_mtime_ns // resolution_ns * resolution_ns
            os.utime(p, ns=(t, t), follow_symlinks=False)


def backup(repo: Repository, url: str, options: dict[str, Any], name: str) -> dict[str, Any]:
    out: dict[str, Any] = run_flow(
        backup_flow,
        False,
        repo=repo.backend.location,
        source=url,
        name=name,
        source_options=options,
    )
    assert not out["partial"], out["warnings"]
    return out


def restore(
    repo: Repository, point: str, target: str, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = run_flow(
        restore_file_point,
        False,
        repo=repo.backend.location,
        point=point,
        target=target,
        target_options=options,
    )
    assert out["ok"], out
    return out


def test_sftp_two_points_restore_exactly(
    repo: Repository, tmp_path: Path, sftp_server: SftpServer
) -> None:
    guest = f"guest-{uuid.uuid4().hex}"
    src = sftp_server.root / guest / "data"
    build_tree(src, xattrs=False)
    truncate_times(src, 10**9)
    v1 = comparable(snapshot(src, xattrs=False))
    url = sftp_server.url(f"{guest}/data")
    first = backup(repo, url, sftp_server.options(), "sftp")
    assert first["source"] == url and first["client"] == "127.0.0.1"
    change_tree(src)
    # SFTP carries whole-second mtimes: a same-size rewrite within the second is invisible to
    # change detection (documented); move the rewritten file's mtime like a later edit would.
    big = src / "docs" / "big.bin"
    later = big.stat().st_mtime_ns + 2 * 10**9
    os.utime(big, ns=(later, later))
    truncate_times(src, 10**9)
    v2 = comparable(snapshot(src, xattrs=False))
    second = backup(repo, url, sftp_server.options(), "sftp")
    assert second["parent"] == first["id"] and second["files_unchanged"] >= 1
    for point, expected in ((first["id"], v1), (second["id"], v2)):
        dest = tmp_path / f"local-{point[:8]}"
        dest.mkdir()
        restore(repo, point, str(dest))
        assert comparable(snapshot(dest, xattrs=False)) == expected
    back = sftp_server.root / guest / "restored"
    back.mkdir()
    restore(repo, second["id"], sftp_server.url(f"{guest}/restored"), sftp_server.options())
    assert comparable(snapshot(back, xattrs=False)) == v2


def test_sftp_restore_of_two_entries_with_one_name_reports_the_second(
    repo: Repository, tmp_path: Path, sftp_server: SftpServer
) -> None:
    """Into a share as into a folder: the first ``x`` is written, the second is a
    ``duplicate-name`` loss (it used to meet the first as "exists", a restore called ok)."""
    src = tmp_path / "src"
    for folder, text in (("a", b"one"), ("b", b"two")):
        (src / folder).mkdir(parents=True)
        (src / folder / "x").write_bytes(text)
    point = run_flow(backup_flow, False, repo=repo.backend.location, source=str(src), name="l")
    guest = f"guest-{uuid.uuid4().hex}"
    (sftp_server.root / guest).mkdir()
    out = run_flow(
        restore_file_point, False, repo=repo.backend.location, point=point["id"],
        target=sftp_server.url(guest), target_options=sftp_server.options(),
        paths=["/a/x", "/b/x"],
    )
    assert not out["ok"] and out["files"] == 1, out
    assert [(w["path"], w["reason"]) for w in out["skipped"]] == [("/b/x", "duplicate-name")]
    assert (sftp_server.root / guest / "x").read_bytes() == b"one"


def test_smb_two_points_restore_exactly(
    repo: Repository, tmp_path: Path, smb_server: SmbServer
) -> None:
    guest = f"guest-{uuid.uuid4().hex}"
    src = smb_server.root / guest / "data"
    build_tree(src, xattrs=False, links=False)
    truncate_times(src, 1000)
    v1 = comparable(snapshot(src, xattrs=False), modes=False)
    url = smb_server.url(f"{guest}/data")
    first = backup(repo, url, smb_server.options(), "smb")
    change_tree_smb(src)
    truncate_times(src, 1000)
    v2 = comparable(snapshot(src, xattrs=False), modes=False)
    second = backup(repo, url, smb_server.options(), "smb")
    assert second["parent"] == first["id"]
    for point, expected in ((first["id"], v1), (second["id"], v2)):
        dest = tmp_path / f"local-{point[:8]}"
        dest.mkdir()
        restore(repo, point, str(dest))
        assert comparable(snapshot(dest, xattrs=False), modes=False) == expected
    back = smb_server.root / guest / "restored"
    back.mkdir()
    restore(repo, second["id"], smb_server.url(f"{guest}/restored"), smb_server.options())
    assert comparable(snapshot(back, xattrs=False), modes=False) == v2


def change_tree_smb(root: Path) -> None:
    (root / "README").write_bytes(b"changed over smb\n")
    (root / "docs" / "a.txt").unlink()
    (root / "new").mkdir()
    (root / "new" / "f").write_bytes(os.urandom(5000))
    (root / "new" / "empty").mkdir()


def _sparse_lastlog(path: Path) -> None:
    """A 64 MiB file holding 8 KiB of data at 20 and 40 MiB, ending in a hole (skips the test
    where the file system keeps no holes)."""
    with open(path, "wb") as f:
        f.truncate(64 << 20)
        f.seek(20 << 20)
        f.write(b"x" * 4096)
        f.seek(40 << 20)
        f.write(b"y" * 4096)
    if os.stat(path).st_blocks * 512 > 1 << 20:
        pytest.skip("this file system does not keep holes")


def test_smb_backup_of_a_sparse_file_reads_no_holes(
    repo: Repository, tmp_path: Path, smb_server: SmbServer
) -> None:
    """A 64 MiB file on a share holding 8 KiB of data: the server's allocated ranges
    (``FSCTL_QUERY_ALLOCATED_RANGES``) leave its holes unread, stored as zero runs; the restore
    gives back every byte, sparse."""
    guest = f"guest-{uuid.uuid4().hex}"
    src = smb_server.root / guest / "data"
    src.mkdir(parents=True)
    _sparse_lastlog(src / "lastlog")
    (src / "dense.bin").write_bytes(os.urandom(3 << 20))
    _mark_sparse(smb_server, f"{guest}/data/lastlog")  # as Windows has every sparse file
    point = backup(repo, smb_server.url(f"{guest}/data"), smb_server.options(), "smb-sparse")
    assert point["bytes_sparse"] > 60 << 20, point
    dest = tmp_path / "back"
    dest.mkdir()
    restore(repo, point["id"], str(dest))
    for name in ("lastlog", "dense.bin"):
        assert (dest / name).read_bytes() == (src / name).read_bytes(), name
    assert os.stat(dest / "lastlog").st_blocks * 512 < 8 << 20


def _mark_sparse(server: SmbServer, path: str) -> None:
    """``FSCTL_SET_SPARSE`` over SMB (``fsutil sparse setflag``): Windows marks every sparse
    file so; Samba answers ``FSCTL_QUERY_ALLOCATED_RANGES`` with the holes only for such files."""
    import smbclient
    from smbclient._io import SMBFileTransaction, ioctl_request
    from smbprotocol.ioctl import CtlCode, IOCTLFlags

    opts = server.options()
    smbclient.register_session("127.0.0.1", username=str(opts["username"]),
                               password=str(opts["password"]), port=int(str(opts["port"])))
    unc = "\\\\127.0.0.1\\share\\" + path.replace("/", "\\")
    with (smbclient.open_file(unc, mode="r+b", port=int(str(opts["port"]))) as f,
          SMBFileTransaction(f.raw) as transaction):
        ioctl_request(transaction, CtlCode.FSCTL_SET_SPARSE,
                          flags=IOCTLFlags.SMB2_0_IOCTL_IS_FSCTL, input_buffer=b"\x01")


def test_smb_allocated_ranges_answers_are_checked() -> None:
    from vmkeep.guestfiles.smb_ranges import RANGE, parse_ranges

    def answer(*ranges: tuple[int, int]) -> bytes:
        return b"".join(RANGE.pack(o, n) for o, n in ranges)

    assert parse_ranges(answer((0, 4096), (4096, 4096), (1 << 20, 100)), 2 << 20) == [
        (0, 8192), (1 << 20, 100)]
    assert parse_ranges(answer((0, 1 << 30)), 5000) == [(0, 5000)]  # clipped to the size
    assert parse_ranges(b"", 5000) == []
    for bad in (answer((4096, 10), (0, 10)), answer((0, 10), (5, 10)), answer((-1, 10)),
                answer((0, 0)), b"\0" * 15):
        assert parse_ranges(bad, 1 << 20) is None, bad


def test_sftp_restore_of_a_sparse_file_sends_no_holes(
    repo: Repository, tmp_path: Path, sftp_server: SftpServer
) -> None:
    """A 64 MiB file holding 8 KiB of data, backed up locally with its holes as zero runs, goes
    back into the guest with seeks, not 64 MiB of zeros: the guest's copy is sparse too."""
    src = tmp_path / "src"
    src.mkdir()
    _sparse_lastlog(src / "lastlog")
    point = run_flow(backup_flow, False, repo=repo.backend.location, source=str(src), name="s")
    assert point["bytes_sparse"] > 60 << 20
    guest = f"guest-{uuid.uuid4().hex}"
    (sftp_server.root / guest).mkdir()
    out = restore(repo, point["id"], sftp_server.url(guest), sftp_server.options())
    assert out["bytes"] < 1 << 20, out  # sent: the data and its neighbourhood, not the holes
    back = sftp_server.root / guest / "lastlog"
    assert back.read_bytes() == (src / "lastlog").read_bytes()
    assert os.stat(back).st_blocks * 512 < 8 << 20


@pytest.mark.parametrize("protocol", ["sftp", "smb"])
def test_remote_sources_leave_out_tagged_cache_directories(
    repo: Repository, protocol: str, request: pytest.FixtureRequest
) -> None:
    """``--exclude-caches`` (the default) holds for sftp:// and smb:// as for a local tree: a
    directory with a signed CACHEDIR.TAG is left out (warned), an unsigned tag is not a cache,
    the source's own root is never one; ``--include-caches`` keeps them."""
    server = request.getfixturevalue(f"{protocol}_server")
    guest = f"guest-{uuid.uuid4().hex}"
    src = server.root / guest / "data"
    for rel, data in {"keep/a.txt": b"a", "cache/blob": b"cached", "deep/x/cache2/blob": b"c2",
                      "fake/CACHEDIR.TAG": b"not a signature\n", "fake/b.txt": b"b",
                      "CACHEDIR.TAG": SIGNATURE}.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    for tagged in ("cache", "deep/x/cache2"):
        (src / tagged / "CACHEDIR.TAG").write_bytes(SIGNATURE)
    url = server.url(f"{guest}/data")
    out = run_flow(backup_flow, False, repo=repo.backend.location, source=url, name=protocol,
                   source_options=server.options())
    paths = {e.path for e in load_file_point(repo, out["id"]).entries}
    assert {b"/keep/a.txt", b"/fake/b.txt", b"/deep/x", b"/CACHEDIR.TAG"} <= paths
    assert not {p for p in paths if b"cache" in p}, paths
    assert sorted((w["path"], w["reason"]) for w in out["warnings"]) == [
        ("/cache", "excluded-cache"), ("/deep/x/cache2", "excluded-cache")]
    kept = run_flow(backup_flow, False, repo=repo.backend.location, source=url, name=protocol,
                    source_options=server.options(), exclude_caches=False)
    paths = {e.path for e in load_file_point(repo, kept["id"]).entries}
    assert {b"/cache/blob", b"/deep/x/cache2/blob"} <= paths and not kept["warnings"]


def test_one_file_system_is_refused_for_a_remote_source(
    repo: Repository, sftp_server: SftpServer
) -> None:
    from vmkeep.errors import UsageError

    with pytest.raises(UsageError, match="--one-file-system needs a local source"):
        run_flow(backup_flow, False, repo=repo.backend.location, source=sftp_server.url("x"),
                 name="x", source_options=sftp_server.options(), one_file_system=True)


SLICE = "system-systemd\\x2dcryptsetup.slice"  # in every Debian 12 system's /usr/lib/systemd


def _restore_over_smb(repo: Repository, point: str, smb_server: SmbServer
                      ) -> tuple[dict[str, Any], Path]:
    """Restore ``point`` into a new folder of the SMB share, the summary however it ends:
    (summary, the folder on the server's disk)."""
    share = f"guest-{uuid.uuid4().hex}"
    (smb_server.root / share).mkdir()
    out: dict[str, Any] = run_flow(
        restore_file_point, False, repo=repo.backend.location, point=point,
        target=smb_server.url(share), target_options=smb_server.options(),
    )
    return out, smb_server.root / share


def test_a_backslash_in_a_linux_name_is_kept_over_sftp_and_refused_over_smb(
    repo: Repository, tmp_path: Path, sftp_server: SftpServer, smb_server: SmbServer
) -> None:
    """systemd escapes names with backslashes: such a file is restored as it is into a Linux
    target (SFTP, a local folder), and reported — never split at the backslash — where the
    target separates paths with it (SMB)."""
    src = tmp_path / "src" / "system"
    src.mkdir(parents=True)
    (src / SLICE).write_bytes(b"[Unit]\nDescription=Cryptsetup Units Slice\n")
    (src / "ok.service").write_bytes(b"[Unit]\n")
    point = run_flow(backup_flow, False, repo=repo.backend.location, source=str(src.parent),
                     name="slices")
    local = tmp_path / "local"
    local.mkdir()
    restore(repo, point["id"], str(local))
    assert (local / "system" / SLICE).read_bytes() == (src / SLICE).read_bytes()
    guest = f"guest-{uuid.uuid4().hex}"
    (sftp_server.root / guest).mkdir()
    restore(repo, point["id"], sftp_server.url(guest), sftp_server.options())
    assert (sftp_server.root / guest / "system" / SLICE).read_bytes() == (src / SLICE).read_bytes()
    out, share = _restore_over_smb(repo, point["id"], smb_server)
    assert not out["ok"], out
    assert [(w["path"], w["reason"]) for w in out["skipped"]] == [
        (f"/system/{SLICE}", "unsafe-name")]
    assert sorted(p.name for p in (share / "system").iterdir()) == [
        "ok.service"]


def test_a_name_that_is_not_utf8_is_kept_over_sftp_and_refused_over_smb(
    repo: Repository, tmp_path: Path, sftp_server: SftpServer, smb_server: SmbServer
) -> None:
    """A Linux guest's Latin-1 name (``caf\\xe9``): restored as the same bytes over SFTP (its
    paths are bytes), reported where the target's names are Unicode (SMB: UTF-16) — the rest
    restored either way."""
    src = tmp_path / "src"
    src.mkdir()
    raw = b"caf\xe9.txt"
    with open(os.fsencode(src) + b"/" + raw, "wb") as f:
        f.write(b"latin-1")
    (src / "ok.txt").write_bytes(b"ok")
    point = run_flow(backup_flow, False, repo=repo.backend.location, source=str(src),
                     name="latin1")
    guest = f"guest-{uuid.uuid4().hex}"
    (sftp_server.root / guest).mkdir()
    restore(repo, point["id"], sftp_server.url(guest), sftp_server.options())
    with open(os.fsencode(sftp_server.root / guest) + b"/" + raw, "rb") as f:
        assert f.read() == b"latin-1"
    out, share = _restore_over_smb(repo, point["id"], smb_server)
    assert not out["ok"], out
    assert [(w["path"], w["reason"]) for w in out["skipped"]] == [
        ("/caf\udce9.txt", "unsafe-name")]
    assert sorted(p.name for p in share.iterdir()) == ["ok.txt"]


def test_the_cli_restores_a_file_point_into_an_sftp_folder(
    repo: Repository, tmp_path: Path, sftp_server: SftpServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``restore files POINT:/ --to sftp://…`` from the command line: ``--to`` was a ``Path``,
    so ``sftp://h/x`` became the local folder ``./sftp:/h/x``.  A file point's files now go to
    the URL (credentials as for a file backup's source); an image point's, or a URL without its
    host, or another protocol, are usage errors (exit 2) before anything is written."""
    from tests.restore.restore_helpers import run_cli

    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "x.txt").write_bytes(b"restored over sftp")
    point = run_flow(backup_flow, False, repo=repo.backend.location, source=str(src), name="l")
    guest = f"guest-{uuid.uuid4().hex}"
    (sftp_server.root / guest).mkdir()
    monkeypatch.setenv("VMKEEP_SOURCE_KEY_FILE", str(sftp_server.key_file))
    monkeypatch.chdir(tmp_path)
    code, _out, err = run_cli("restore", "files", f"{point['id'][:8]}:/",
                              "--to", sftp_server.url(guest), repo=repo.backend.location)
    assert code == 0, err
    assert (sftp_server.root / guest / "d" / "x.txt").read_bytes() == b"restored over sftp"
    for to, says in (("smb://", "names no host"), ("s3://bucket/x", "unsupported target"),
                     ("sftp://h:ssh/x", "does not parse")):
        code, _out, err = run_cli("restore", "files", f"{point['id'][:8]}:/", "--to", to,
                                  repo=repo.backend.location)
        assert code == 2 and says in err, (to, err)
    assert not (tmp_path / "sftp:").exists() and not (tmp_path / "smb:").exists()
