"""The FUSE tree: operations in-process; real mounts ended by each signal or an outside unmount;
bad mount folders and a refused mount as typed errors."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vmkeep.disks.errors import FsDamagedError, MountPointError
from vmkeep.disks.fs.base import Entry
from vmkeep.disks.fusefs import DiskTree, Folder, Inside, RootTree, TreeOps, mount
from vmkeep.disks.vmdk.opener import open_disk


@pytest.fixture(scope="module")
def tree(disks):
    return DiskTree(
        [
            ("gpt", open_disk(disks.vmdk_sparse)),
            ("mbr", open_disk(disks.mbr)),
            ("bt", open_disk(disks.btrfs)),
        ]
    )


def names(ops: TreeOps, path: str) -> list[str]:
    return [name for name, _, _ in ops.readdir(path, 0)]


def test_layout(tree):
    ops = TreeOps(tree)
    assert names(ops, "/") == [".", "..", "disks", "volumes"]
    assert names(ops, "/disks")[2:] == ["gpt.raw", "mbr.raw", "bt.raw"]
    vols = set(names(ops, "/volumes")[2:])
    assert {
        "gpt-p1",
        "gpt-p2",
        "gpt-vg0-lvext",
        "gpt-vg0-lvfat",
        "mbr-p1",
        "mbr-p2",
        "bt-whole",
    } <= vols
    assert ops.getattr("/disks/gpt.raw")["st_size"] == 400 * 1024 * 1024
    attrs = ops.getattr("/volumes/gpt-p1/hello.txt")
    assert attrs["st_size"] == 12 and attrs["st_mode"] & 0o222 == 0
    assert attrs["st_mtime"] == 1_600_000_000 * 10**9
    assert ops.readlink("/volumes/gpt-p1/link") == "hello.txt"
    # st_ino: stable, and distinct across volumes that number their inodes alike
    inos = [ops.getattr(p)["st_ino"] for p in ("/", "/disks", "/disks/gpt.raw",
                                                "/volumes/gpt-p1/hello.txt", "/volumes/gpt-p1",
                                                "/volumes/mbr-p1/hello.txt", "/volumes/mbr-p1")]
    assert len(set(inos)) == len(inos)
    assert ops.getattr("/volumes/gpt-p1/hello.txt")["st_ino"] == inos[3]
    for folder in ("/", "/volumes", "/volumes/gpt-p1", "/volumes/mbr-p1/"):  # readdir agrees
        for name, attrs, _ in ops.readdir(folder, 0):
            child = folder if name == "." else folder.rstrip("/") + "/" + name
            if name != "..":
                assert attrs["st_ino"] == ops.getattr(child)["st_ino"], child
    with pytest.raises(OSError) as e:
        ops.getattr("/volumes/gpt-p1/nope")
    assert e.value.errno == errno.ENOENT
    for path, code in [("/volumes/gpt-p1/nope", errno.ENOENT),
                       ("/volumes/gpt-p1/hello.txt", errno.ENOTDIR)]:
        with pytest.raises(OSError) as e:
            ops.readdir(path, 0)
        assert e.value.errno == code, path
    with pytest.raises(OSError) as e:
        ops.open("/volumes/gpt-p1/hello.txt", os.O_WRONLY)
    assert e.value.errno == errno.EROFS


def test_reads(tree, disks):
    ops = TreeOps(tree)
    fh = ops.open("/volumes/gpt-vg0-lvext/big/multi.bin", os.O_RDONLY)
    data = b"".join(ops.read("", 128 * 1024, off, fh) for off in range(0, 1_200_000, 128 * 1024))
    ops.release("", fh)
    assert hashlib.sha256(data).hexdigest() == disks.hashes["big/multi.bin"]
    fh = ops.open("/disks/gpt.raw", os.O_RDONLY)
    assert ops.read("", 8, 512, fh) == b"EFI PART"
    assert ops.listxattr("/volumes/mbr-p1/hello.txt") == ["user.secret"]
    assert ops.getxattr("/volumes/mbr-p1/hello.txt", "user.secret") == b"alternate stream data\n"


class ShortTree:
    """A file system whose ``/short.bin`` (100,000 bytes by its entry) gives only 60,000."""

    def stat(self, path: str, follow: bool = False) -> Entry:
        if path == "/":
            return Entry("/", "/", "dir", 0, 0, stat.S_IFDIR | 0o755)
        return Entry("short.bin", path, "file", 100_000, 0, stat.S_IFREG | 0o644)

    def listdir(self, path: str = "/") -> list[Entry]:
        return [self.stat("/short.bin")]

    def open(self, path: str, stream: str | None = None) -> io.BytesIO:
        return io.BytesIO(b"d" * 60_000)

    def readlink(self, path: str) -> str:
        raise OSError(errno.EINVAL, "not a link")


def test_a_read_the_file_system_cuts_short_is_eio_not_zeros() -> None:
    """A short read before the file's end would reach a reader as zeros (the kernel fills the
    page): it is an I/O error; at the end of the file it is the end."""
    ops = TreeOps(RootTree(ShortTree()))
    fh = ops.open("/short.bin", os.O_RDONLY)
    assert ops.read("", 4096, 0, fh) == b"d" * 4096
    with pytest.raises(OSError) as e:
        ops.read("", 65_536, 40_960, fh)
    assert e.value.errno == errno.EIO
    assert ops.read("", 4096, 100_000, fh) == b""


class UnreadableRoot(ShortTree):
    """A volume whose root cannot be read (its directory damaged)."""

    def stat(self, path: str, follow: bool = False) -> Entry:
        raise FsDamagedError("vol", "root directory inode damaged")


class OneVolume:
    def place(self, parts: list[str]) -> Folder | Inside:
        return Inside(UnreadableRoot(), "/" + "/".join(parts[1:])) if parts else Folder(["vol"])


def test_a_folder_lists_a_volume_whose_root_cannot_be_read() -> None:
    ops = TreeOps(OneVolume())
    assert names(ops, "/") == [".", "..", "vol"]
    with pytest.raises(OSError) as e:
        ops.getattr("/vol")
    assert e.value.errno == errno.EIO


needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0, reason="needs FUSE as root"
)
MOUNT_SCRIPT = """
import sys
from vmkeep.disks.fusefs import DiskTree, mount
from vmkeep.disks.vmdk.opener import open_disk
tree = DiskTree([("gpt", open_disk(sys.argv[1]))])
mount(tree, sys.argv[2])
print("clean exit", flush=True)
"""


def start_mount(disk: Path, mnt: Path, *prefix: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*prefix, sys.executable, "-c", MOUNT_SCRIPT, str(disk), str(mnt)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_mounted(mnt: Path, proc: subprocess.Popen[str], deadline_s: float = 120) -> None:
    """Poll for the mount (a state, not a speed: the deadline only stops a hung test)."""
    deadline = time.monotonic() + deadline_s
    while not os.path.ismount(mnt):
        if proc.poll() is not None:
            pytest.fail(f"mount exited early ({proc.returncode}): {proc.communicate()[0]}")
        if time.monotonic() > deadline:
            pytest.fail("mount did not appear")
        time.sleep(0.05)


def kill_leftover(proc: subprocess.Popen[str], mnt: Path) -> None:
    """A failed test's mount process killed and its mount detached (nothing when it ended)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
        subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)


def stop_by(how: str, proc: subprocess.Popen[str], mnt: Path) -> None:
    if how == "fusermount3 -u":
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
    else:
        proc.send_signal(getattr(signal, how))


@needs_fuse
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGHUP", "fusermount3 -u"])
def test_real_mount_serves_then_unmounts_cleanly(disks, tmp_path, how):
    """Whatever ends the mount (libfuse 2 or 3 loaded), mount() returns: exit 0, no traceback."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = start_mount(disks.vmdk_stream, mnt)
    try:
        wait_mounted(mnt, proc)
        assert (mnt / "volumes/gpt-p1/hello.txt").read_bytes() == b"hello world\n"
        assert os.readlink(mnt / "volumes/gpt-p2/link") == "hello.txt"
        with pytest.raises(OSError):
            (mnt / "volumes/gpt-p1/new").write_text("x")
        stop_by(how, proc, mnt)
        out, _ = proc.communicate(timeout=120)
    finally:
        kill_leftover(proc, mnt)
    assert proc.returncode == 0 and "clean exit" in out, out
    assert "Traceback" not in out
    assert not os.path.ismount(mnt)
    assert list(Path(mnt).iterdir()) == []


@needs_fuse
def test_signal_while_a_file_is_open_still_unmounts(disks, tmp_path):
    """A busy mount is detached at once (lazy unmount); closing the file lets the loop end."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = start_mount(disks.vmdk_stream, mnt)
    try:
        wait_mounted(mnt, proc)
        with open(mnt / "volumes/gpt-p1/hello.txt", "rb") as busy:
            proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 120
            while os.path.ismount(mnt) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not os.path.ismount(mnt)
            assert busy.read() == b"hello world\n"  # still served while open
        out, _ = proc.communicate(timeout=120)
    finally:
        kill_leftover(proc, mnt)
    assert proc.returncode == 0 and "clean exit" in out, out


@pytest.mark.parametrize("kind", ["file", "non-empty", "missing"])
def test_bad_mountpoint_is_a_typed_error(tree, tmp_path, kind):
    mnt = tmp_path / "mnt"
    if kind == "file":
        mnt.write_text("x")
    elif kind == "non-empty":
        mnt.mkdir()
        (mnt / "f").write_text("x")
    with pytest.raises(MountPointError) as e:
        mount(tree, mnt)
    assert e.value.exit_code == 14 and str(mnt) in str(e.value)


@needs_fuse
@pytest.mark.skipif(not shutil.which("unshare"), reason="needs unshare (util-linux)")
def test_kernel_refusing_the_mount_is_a_typed_error(disks, tmp_path):
    """/dev/fuse replaced by /dev/null in a private mount namespace: the kernel refuses."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = 'mount --bind /dev/null /dev/fuse && exec "$@"'
    proc = start_mount(
        disks.vmdk_stream,
        mnt,
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    )
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "FuseMountError: FUSE mount on" in out, out
    assert not os.path.ismount(mnt)


def test_the_loop_ending_after_our_own_unmount_is_not_a_failure() -> None:
    """libfuse 3 says 8 and libfuse 2 may say 1 (its read of the detached device meeting
    ECONNABORTED while a file was open) once we have unmounted on a signal: a clean end.
    Without our stop, the same codes are a failed mount."""
    from vmkeep.disks.errors import FuseMountError
    from vmkeep.disks.fuse_session import _raise_failure

    _raise_failure(RuntimeError(1), "/m", stopped=True, libfuse_major=2)
    _raise_failure(RuntimeError(8), "/m", stopped=True, libfuse_major=3)
    for code, major in ((1, 2), (8, 3)):
        with pytest.raises(FuseMountError):
            _raise_failure(RuntimeError(code), "/m", stopped=False, libfuse_major=major)


def test_a_loop_that_ends_by_itself_leaves_no_mount_behind(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Once seen under load: ``mount`` said "unmounted" and exited, and the kernel still listed
    its mount (every access then fails with ENOTCONN).  When the loop ends without our unmount
    while the kernel lists the mount, :func:`serve` detaches it (control flow with a fake loop;
    the mounts listing is read for real)."""
    from vmkeep.disks import fuse_session

    detached: list[str] = []
    monkeypatch.setattr(fuse_session, "_unmount", detached.append)

    class Ops:
        def init(self, path: str) -> None:
            return None

    ops = Ops()

    def loop_that_mounts_and_ends() -> None:
        ops.init("/")  # libfuse's INIT: mounted

    for listed, expected in ((True, [str(tmp_path)]), (False, [])):
        detached.clear()
        monkeypatch.setattr(fuse_session, "_still_mounted", lambda p, listed=listed: listed)
        fuse_session.serve(loop_that_mounts_and_ends, ops, str(tmp_path), 3)
        assert detached == expected


def test_the_mounts_listing_is_read_with_the_kernels_escapes(tmp_path: Path) -> None:
    """/proc/self/mounts writes a space as \\040: a mount folder named with one is found."""
    from vmkeep.disks.fuse_session import _still_mounted

    assert _still_mounted("/proc") and not _still_mounted("/proc/self")
    folder = tmp_path / "a mount\tpoint"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "none", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        assert _still_mounted(str(folder))
    finally:
        subprocess.run(["umount", str(folder)], check=True)
    assert not _still_mounted(str(folder))


LINKS_SCRIPT = '''
import io, stat, sys
from vmkeep.disks.fs.base import Entry
from vmkeep.disks.fusefs import RootTree, mount

TARGETS = {"/ntfs": "z\\ud800qq.txt", "/ext": "caf\\udce9", "/plain": "a.txt"}

class Links:
    def stat(self, path, follow=False):
        if path == "/":
            return Entry("/", "/", "dir", 0, 0, stat.S_IFDIR | 0o755)
        size = len(TARGETS[path].encode("utf-8", "surrogatepass"))
        return Entry(path[1:], path, "symlink", size, 0, stat.S_IFLNK | 0o777)
    def listdir(self, path="/"):
        return [self.stat(p) for p in TARGETS]
    def open(self, path, stream=None):
        return io.BytesIO(b"")
    def readlink(self, path):
        return TARGETS[path]

mount(RootTree(Links()), sys.argv[1])
print("clean exit", flush=True)
'''


@needs_fuse
def test_a_link_to_a_name_with_an_unpaired_surrogate_reads(tmp_path: Path) -> None:
    """An NTFS link whose target holds an unpaired UTF-16 surrogate reads as its WTF-8 bytes
    (it was EINVAL, and a traceback in the mount's output); a Linux link's target bytes that
    are not UTF-8 read as they are."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", LINKS_SCRIPT, str(mnt)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_mounted(mnt, proc)
        assert os.readlink(os.fsencode(mnt / "ntfs")) == b"z\xed\xa0\x80qq.txt"
        assert os.readlink(os.fsencode(mnt / "ext")) == b"caf\xe9"
        assert os.readlink(mnt / "plain") == "a.txt"
        subprocess.run(["fusermount3", "-u", str(mnt)], check=True)
        out, _ = proc.communicate(timeout=120)
    finally:
        kill_leftover(proc, mnt)
    assert "clean exit" in out and "Traceback" not in out, out
