"""``restore files REF… --to -`` — restic's ``dump``, borg's ``extract --stdout``: one regular
file as its bytes, anything else as a tar archive of what a restore into a folder would create,
from file points and from image points (a real ext4 made by ``mke2fs -d``)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from tests.restore.restore_helpers import VMKEEP, vmkeep_json
from tests.support.run_cli import cli_env

BIG = bytes(range(256)) * 5000  # 1.25 MiB: more than one block of the stream
XATTR = b"\x00\xff binary value"  # not text: the pax header is marked binary


def _tree(root: Path) -> Path:
    (root / "etc" / "nginx").mkdir(parents=True)
    (root / "etc" / "nginx" / "nginx.conf").write_text("worker_processes 4;\n")
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc" / "nginx" / "default").symlink_to("nginx.conf")
    (root / "data.bin").write_bytes(BIG)
    os.chmod(root / "etc" / "hosts", 0o640)
    os.utime(root / "etc" / "hosts", (1_000_000_000, 1_000_000_000))
    (root / os.fsdecode(b"caf\xe9.txt")).write_text("latin-1 name\n")  # not UTF-8
    os.link(root / "data.bin", root / "data.link")  # one file, two names
    os.setxattr(root / "etc" / "hosts", "user.tag", XATTR)
    os.setxattr(root / "etc", "user.folder=kind", b"config")  # '=' cannot stand in a keyword
    return root


def _dump(
    repo: Path, *refs: str, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*VMKEEP, "restore", "files", *refs, "--to", "-", *extra],
                          capture_output=True, timeout=300,
                          env=cli_env(VMKEEP_REPO=str(repo), PREFECT_API_URL=""))


def _members(data: bytes) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8",
                      errors="surrogateescape") as tar:
        return {m.name: m for m in tar.getmembers()}


def _content(data: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:", encoding="utf-8",
                      errors="surrogateescape") as tar:
        extracted = tar.extractfile(name)
        assert extracted is not None
        return extracted.read()


def _ref(points: tuple[Path, str, str], kind: str, path: str) -> str:
    """``path`` (absolute) in the file point or in the image point's whole-disk volume."""
    _repo, files, image = points
    return f"{files}:{path}" if kind == "files" else f"{image}:disk0-whole{path}"


@pytest.fixture(scope="module")
def points(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A repository with a file point and an image point of the same tree."""
    work = tmp_path_factory.mktemp("dump")
    src = _tree(work / "src")
    img = work / "ext4.img"
    b.mkfs_ext4(src, img)
    repo = work / "repo"
    vmkeep_json("init", repo=repo)
    files = vmkeep_json("backup", "files", str(src), "--name", "tree", repo=repo)["id"]
    image = vmkeep_json("backup", "image", str(img), "--name", "img", repo=repo)["id"]
    return repo, files[:12], image[:12]


@pytest.mark.parametrize("kind", ["files", "image"])
def test_one_file_comes_as_its_bytes(points: tuple[Path, str, str], kind: str) -> None:
    repo = points[0]
    done = _dump(repo, _ref(points, kind, "/data.bin"))
    assert done.returncode == 0, done.stderr
    assert done.stdout == BIG
    assert b"restored 1 file(s)" in done.stderr and b"standard output" in done.stderr


@pytest.mark.parametrize("kind", ["files", "image"])
def test_a_folder_comes_as_a_tar_archive(points: tuple[Path, str, str], kind: str) -> None:
    repo = points[0]
    done = _dump(repo, _ref(points, kind, "/etc"))
    assert done.returncode == 0, done.stderr
    members = _members(done.stdout)
    assert set(members) == {"etc", "etc/hosts", "etc/nginx", "etc/nginx/nginx.conf",
                            "etc/nginx/default"}
    hosts = members["etc/hosts"]
    assert hosts.isfile() and hosts.mode == 0o640 and hosts.mtime == 1_000_000_000
    assert members["etc/nginx"].isdir()
    assert members["etc/nginx/default"].issym()
    assert members["etc/nginx/default"].linkname == "nginx.conf"
    assert _content(done.stdout, "etc/nginx/nginx.conf") == b"worker_processes 4;\n"


@pytest.mark.parametrize("kind", ["files", "image"])
def test_several_selections_and_names_that_are_not_utf8(
    points: tuple[Path, str, str], kind: str
) -> None:
    repo = points[0]
    done = _dump(repo, _ref(points, kind, "/etc/hosts"),
                 _ref(points, kind, "/" + os.fsdecode(b"caf\xe9.txt")))
    assert done.returncode == 0, done.stderr
    latin = os.fsdecode(b"caf\xe9.txt")
    assert set(_members(done.stdout)) == {"hosts", latin}  # each under its own name
    assert _content(done.stdout, latin) == b"latin-1 name\n"


def test_the_whole_tree_unpacks_with_tar(points: tuple[Path, str, str], tmp_path: Path) -> None:
    """The stream as GNU tar reads it (``vmkeep restore files P:/ --to - | tar -x``)."""
    repo, files, _image = points
    done = _dump(repo, f"{files}:/")
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-x", "-C", str(out)], input=done.stdout, check=True)
    assert (out / "data.bin").read_bytes() == BIG
    assert (out / "etc" / "nginx" / "nginx.conf").read_text() == "worker_processes 4;\n"
    assert os.readlink(out / "etc" / "nginx" / "default") == "nginx.conf"
    assert (out / os.fsdecode(b"caf\xe9.txt")).read_text() == "latin-1 name\n"


def test_a_reader_that_goes_away_is_exit_15(points: tuple[Path, str, str]) -> None:
    repo, files, _image = points
    proc = subprocess.Popen([*VMKEEP, "restore", "files", f"{files}:/data.bin", "--to", "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=cli_env(VMKEEP_REPO=str(repo), PREFECT_API_URL=""))
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.read(10) == BIG[:10]
    proc.stdout.close()  # as `| head -c 10` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 15, err
    assert "the reader went away" in err and "Traceback" not in err


@pytest.mark.parametrize(("extra", "says"), [
    (("--json",), "no --json"),
    (("--prefect",), "not with --prefect"),
    (("--overwrite",), "no --overwrite"),
    (("--preserve-owner",), "no --overwrite, --preserve-owner"),
])
def test_options_a_stream_cannot_honour_are_usage_errors(
    points: tuple[Path, str, str], extra: tuple[str, ...], says: str
) -> None:
    repo, files, _image = points
    done = _dump(repo, f"{files}:/etc", extra=extra)
    assert done.returncode == 2 and says in done.stderr.decode(), done.stderr
    assert done.stdout == b""
    assert not Path("-").exists()


def _untar(data: bytes, out: Path) -> Path:
    """``… --to - | tar -x --xattrs --xattrs-include='*' -C out`` (GNU tar)."""
    out.mkdir()
    subprocess.run(["tar", "-x", "--xattrs", "--xattrs-include=*", "-C", str(out)],
                   input=data, check=True)
    return out


@pytest.mark.parametrize("kind", ["files", "image"])
def test_hard_links_come_as_links(points: tuple[Path, str, str], kind: str,
                                  tmp_path: Path) -> None:
    """As a restore into a folder links them: the second name is a link member, not the
    file's bytes again."""
    repo = points[0]
    done = _dump(repo, _ref(points, kind, "/"))
    assert done.returncode == 0, done.stderr
    members = _members(done.stdout)
    assert members["data.bin"].isfile() and members["data.bin"].size == len(BIG)
    assert members["data.link"].islnk() and members["data.link"].linkname == "data.bin"
    assert len(done.stdout) < 2 * len(BIG)
    assert b"1 hard link(s)" in done.stderr
    out = _untar(done.stdout, tmp_path / "out")
    assert (out / "data.link").read_bytes() == BIG
    assert (out / "data.link").stat().st_ino == (out / "data.bin").stat().st_ino


def test_extended_attributes_of_a_file_backup_are_in_the_archive(
    points: tuple[Path, str, str], tmp_path: Path
) -> None:
    """What a restore into a folder sets, as SCHILY.xattr records GNU tar applies with
    --xattrs: binary values byte for byte, a name with '=' spelled as GNU tar spells it."""
    repo, files, _image = points
    done = _dump(repo, f"{files}:/etc")
    assert done.returncode == 0, done.stderr
    members = _members(done.stdout)
    assert members["etc/hosts"].pax_headers["SCHILY.xattr.user.tag"].encode(
        "utf-8", "surrogateescape") == XATTR
    assert "SCHILY.xattr.user.folder%3Dkind" in members["etc"].pax_headers
    out = _untar(done.stdout, tmp_path / "out")
    assert os.getxattr(out / "etc" / "hosts", "user.tag") == XATTR
    assert os.getxattr(out / "etc", "user.folder=kind") == b"config"
    assert (out / "etc" / "hosts").read_text() == "127.0.0.1 localhost\n"


def test_ntfs_alternate_data_streams_are_extended_attributes(tmp_path: Path) -> None:
    """An NTFS file's alternate data stream, written by ntfs-3g, comes as the ``user.``
    attribute a restore into a folder gives the file."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hello world\n")  # mkfs_ntfs gives it the stream "secret"
    img = tmp_path / "ntfs.img"
    b.mkfs_ntfs(src, img, tmp_path / "mnt")
    repo = tmp_path / "repo"
    vmkeep_json("init", repo=repo)
    point = vmkeep_json("backup", "image", str(img), "--name", "ntfs", repo=repo)["id"][:12]
    done = _dump(repo, f"{point}:disk0-whole/")
    assert done.returncode == 0, done.stderr
    hello = _members(done.stdout)["hello.txt"]
    assert hello.pax_headers["SCHILY.xattr.user.secret"] == "alternate stream data\n"
    out = _untar(done.stdout, tmp_path / "out")
    assert os.getxattr(out / "hello.txt", "user.secret") == b"alternate stream data\n"
    assert (out / "hello.txt").read_text() == "hello world\n"
