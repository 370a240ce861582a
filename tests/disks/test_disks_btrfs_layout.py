"""A Btrfs root file system shown as its guest mounts it, from its own ``/etc/fstab``: SUSE's
layout (the default subvolume a snapper snapshot, ``@/home``, ``@/var`` mounted through fstab)
and Ubuntu's (``@`` at ``/`` and ``@home`` at ``/home`` from the top level) list and restore
``/home`` and ``/var`` as the guest sees them — before, ``/home`` was empty (SUSE) or the files
sat under ``/@home`` (Ubuntu).  An fstab that would mount a subvolume holding ``/`` inside
itself is not followed (no cycle).  The volumes are made by Linux (``btrfs subvolume``) on a loop
device, in a private mount namespace."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.missing import missing as tool_missing
from vmkeep.disks.fs import open_filesystem
from vmkeep.disks.fs.btrfs_mounts import Mount, fstab_mounts
from vmkeep.disks.safe_restore import restore

UUID = "0f8e2b1c-5a3d-4c6e-9b7a-112233445566"


def _made(tmp: Path, script: str) -> Path:
    """A 320 MiB Btrfs volume (this UUID) after ``script`` ran in ``$M``, where it is mounted."""
    for tool in ("mkfs.btrfs", "btrfs", "unshare", "mount", "losetup"):
        if shutil.which(tool) is None:
            tool_missing(f"missing tools: {tool} (see .ci/apt-packages)")
    img, mnt = tmp / "btrfs.img", tmp / "mnt"
    with open(img, "wb") as f:
        f.truncate(320 << 20)
    subprocess.run(["mkfs.btrfs", "-q", "-f", "-U", UUID, str(img)], check=True,
                   capture_output=True)
    mnt.mkdir()
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-euc",
         f'mount -o loop "$1" "$2"; cd "$2"; M="$2"\n{script}\ncd /; umount "$2"',
         "sh", str(img), str(mnt)],
        capture_output=True, text=True)
    assert done.returncode == 0, done.stderr  # Linux's btrfs on a loop device, as root
    return img


SUSE = f"""
btrfs -q subvolume create @
for s in home var opt .snapshots; do btrfs -q subvolume create @/$s; done
mkdir @/.snapshots/1
btrfs -q subvolume create @/.snapshots/1/snapshot
R=@/.snapshots/1/snapshot
mkdir -p $R/etc $R/home $R/var $R/opt $R/.snapshots
cat > $R/etc/fstab <<EOF
UUID={UUID}  /            btrfs  defaults               0 0
UUID={UUID}  /home        btrfs  subvol=/@/home         0 0
UUID={UUID}  /var         btrfs  subvol=@/var           0 0
UUID={UUID}  /opt         btrfs  subvol=/@/opt          0 0
UUID={UUID}  /.snapshots  btrfs  subvol=/@/.snapshots   0 0
/dev/sda3    /srv         btrfs  subvol=/@/srv          0 0
EOF
echo os-release > $R/etc/os-release
mkdir -p @/home/ann @/var/log
echo "ann's notes" > @/home/ann/notes.txt
echo "a log line" > @/var/log/messages
btrfs subvolume set-default $(btrfs subvolume list . | awk '/snapshot$/ {{print $2}}') .
"""

UBUNTU = f"""
btrfs -q subvolume create @
btrfs -q subvolume create @home
mkdir -p @/etc @/home
cat > @/etc/fstab <<EOF
# <file system> <mount point> <type> <options> <dump> <pass>
UUID={UUID} /     btrfs defaults,subvol=@     0 1
/dev/disk/by-uuid/{UUID} /home btrfs defaults,subvol=@home 0 2
EOF
mkdir -p @home/bob
echo "bob's notes" > @home/bob/notes.txt
"""

#: / is @; its fstab mounts the top level, which holds @, at /again: a cycle, not followed
CYCLE = f"""
btrfs -q subvolume create @
btrfs -q subvolume create data
mkdir -p @/etc @/again @/data
echo payload > data/file
cat > @/etc/fstab <<EOF
UUID={UUID} /       btrfs subvol=@        0 0
UUID={UUID} /again  btrfs subvolid=5      0 0
UUID={UUID} /data   btrfs subvol=data     0 0
EOF
"""


def _names(fs, path: str) -> list[str]:  # type: ignore[no-untyped-def]
    return sorted(e.name for e in fs.listdir(path))


def test_suse_subvolumes_are_where_the_guest_mounts_them(tmp_path: Path) -> None:
    img = _made(tmp_path, SUSE)
    with open(img, "rb") as fh:
        fs = open_filesystem(fh, "v")
        assert _names(fs, "/") == [".snapshots", "etc", "home", "opt", "var"]
        assert _names(fs, "/home") == ["ann"]
        with fs.open("/home/ann/notes.txt") as f:
            assert f.read() == b"ann's notes\n"
        with fs.open("/var/log/messages") as f:
            assert f.read() == b"a log line\n"
        assert _names(fs, "/.snapshots") == []  # it holds "/" itself: not mounted
        out = tmp_path / "out"
        out.mkdir()
        summary = restore(fs, out, "/")
    assert summary.skipped == []
    assert (out / "home" / "ann" / "notes.txt").read_text() == "ann's notes\n"
    assert (out / "var" / "log" / "messages").read_text() == "a log line\n"


def test_ubuntu_subvolumes_are_where_the_guest_mounts_them(tmp_path: Path) -> None:
    img = _made(tmp_path, UBUNTU)
    with open(img, "rb") as fh:
        fs = open_filesystem(fh, "v")
        assert _names(fs, "/") == ["etc", "home"]
        with fs.open("/home/bob/notes.txt") as f:
            assert f.read() == b"bob's notes\n"


def test_an_fstab_that_would_loop_is_not_followed_into_a_loop(tmp_path: Path) -> None:
    img = _made(tmp_path, CYCLE)
    with open(img, "rb") as fh:
        fs = open_filesystem(fh, "v")
        assert _names(fs, "/") == ["again", "data", "etc"]
        assert _names(fs, "/again") == []  # the top level holds "/": not mounted there
        out = tmp_path / "out"
        out.mkdir()
        restore(fs, out, "/")  # ends: no path repeats
    assert (out / "data" / "file").read_text() == "payload\n"


def test_fstab_entries_of_this_volume() -> None:
    text = "\n".join([
        "# a comment",
        f"UUID={UUID.upper()} /srv/my\\040data btrfs rw,subvol=/@/srv,compress=zstd 0 0",
        "LABEL=root /x btrfs subvolid=260 0 0",
        f"UUID={UUID} relative btrfs subvol=@x 0 0",
        f"UUID={UUID} /../etc btrfs subvol=@y 0 0",
        f"UUID={UUID} /tmp tmpfs defaults 0 0",
        "UUID=another /other btrfs subvol=@z 0 0",
        f"UUID={UUID} /plain btrfs defaults",
    ])
    assert fstab_mounts(text, UUID, "root") == [
        Mount("/srv/my data", "@/srv", None), Mount("/x", None, 260),
        Mount("/plain", None, None)]
    assert fstab_mounts(text, UUID, "") == [
        Mount("/srv/my data", "@/srv", None), Mount("/plain", None, None)]
