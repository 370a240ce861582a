"""Finding a guest's swap (``vmkeep.disks.swap``) on real disks made by the mkfs tools.

Each area found is checked against an independent reader (``ntfscat``, ``debugfs``, the
partition's own bytes), and zeroing every area must leave each other file intact and the file
systems clean (``e2fsck -fn``, ``ntfsfix -n``): an exclusion that touched anything else would
lose data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.disks import disk_builders as b
from tests.missing import missing as tool_missing
from vmkeep.disks.swap import PAGE, SwapArea, _checked_runs, _clusters_to_runs, find_swap
from vmkeep.disks.volumes import Volume

M = b.MiB


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        tool_missing(f"missing tools: {missing} (see .ci/apt-packages)")


def _pread(path: Path):  # type: ignore[no-untyped-def]
    fd = os.open(path, os.O_RDONLY)
    return lambda offset, length: os.pread(fd, length, offset)


def _zeroed_copy(disk: Path, areas: list[SwapArea], out: Path) -> Path:
    shutil.copyfile(disk, out)
    with open(out, "r+b") as f:
        for a in areas:
            f.seek(a.offset)
            f.write(bytes(a.length))
    return out


def _extract(disk: Path, offset: int, size: int, out: Path) -> Path:
    with open(disk, "rb") as src, open(out, "wb") as dst:
        src.seek(offset)
        dst.write(src.read(size))
    return out


def _mkswap_file(path: Path, size: int, seed: int) -> bytes:
    path.write_bytes(hashlib.shake_256(str(seed).encode()).digest(size))
    b.run("mkswap", path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def linux_disk(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    """GPT: p1 ext4 (with /swapfile and data), p2 a swap partition, p3 an LVM PV holding
    vg0/lvswap (swap) and vg0/lvhib (a swap area holding a hibernation image)."""
    _need("mke2fs", "mkswap", "debugfs", "e2fsck")
    root = tmp_path_factory.mktemp("swap-linux")
    tree = root / "tree"
    tree.mkdir()
    (tree / "etc").mkdir()
    (tree / "etc/fstab").write_text("/swapfile none swap sw 0 0\n")
    (tree / "data.bin").write_bytes(os.urandom(3 * M))
    swapfile = _mkswap_file(tree / "swapfile", 4 * M, 1)
    ext4 = root / "ext4.fs"
    b.mkfs_ext4(tree, ext4, 24)
    part = root / "swap.part"
    part_bytes = _mkswap_file(part, 8 * M, 2)
    lvswap = root / "lvswap"
    _mkswap_file(lvswap, 8 * M, 3)
    lvhib = root / "lvhib"
    hib = bytearray(_mkswap_file(lvhib, 8 * M, 4))
    hib[PAGE - 10 : PAGE] = b"S1SUSPEND\0"  # what the kernel writes over the magic at hibernate
    lvhib.write_bytes(hib)

    disk = b.new_disk(root / "linux.img", 64 * M)
    b.write_gpt(disk, [
        (b.LINUX_FS, 2048, 2048 + 24 * 2048 - 1, "root"),
        (b.LINUX_FS, 25 * 2048, 25 * 2048 + 8 * 2048 - 1, "swap"),
        (b.LINUX_LVM, 33 * 2048, 33 * 2048 + 24 * 2048 - 1, "lvm"),
    ])
    b.place(disk, 1 * M, ext4)
    b.place(disk, 25 * M, part)
    pe0 = b.write_lvm_pv(disk, 33 * M, 24 * M, {"lvswap": (0, 8), "lvhib": (8, 8)})
    b.place(disk, pe0, lvswap)
    b.place(disk, pe0 + 8 * M, lvhib)
    return disk, {"root": root, "swapfile": swapfile, "part": part_bytes, "pe0": pe0,
                  "data": (tree / "data.bin").read_bytes()}


def test_linux_swap_partition_lv_and_file(linux_disk: tuple[Path, dict[str, object]],
                                          tmp_path: Path) -> None:
    disk, facts = linux_disk
    scan = find_swap(_pread(disk), disk.stat().st_size)
    by_what = {a.what: a for a in scan.areas}
    assert set(by_what) == {"p1:/swapfile", "p2 (swap partition)", "vg0/lvswap (swap partition)"}
    part = by_what["p2 (swap partition)"]
    assert (part.offset, part.length) == (25 * M + PAGE, 8 * M - PAGE)
    lv = by_what["vg0/lvswap (swap partition)"]
    assert (lv.offset, lv.length) == (int(facts["pe0"]) + PAGE, 8 * M - PAGE)  # type: ignore[call-overload]
    # the swap file's areas hold exactly its bytes after the first page (debugfs reads it)
    swapfile = facts["swapfile"]
    assert isinstance(swapfile, bytes)
    with open(disk, "rb") as f:
        got = b""
        for a in sorted((a for a in scan.areas if a.what == "p1:/swapfile"),
                        key=lambda a: a.offset):
            f.seek(a.offset)
            got += f.read(a.length)
    assert got == swapfile[PAGE:]
    # zeroing every area: the other file, the file system and every swap signature survive
    zeroed = _zeroed_copy(disk, scan.areas, tmp_path / "zeroed.img")
    fs = _extract(zeroed, 1 * M, 24 * M, tmp_path / "p1.fs")
    subprocess.run(["e2fsck", "-fn", str(fs)], check=True, capture_output=True)
    out = subprocess.run(["debugfs", "-R", "cat /data.bin", str(fs)], check=True,
                         capture_output=True).stdout
    assert out == facts["data"]
    head = subprocess.run(["debugfs", "-R", "cat /swapfile", str(fs)], check=True,
                          capture_output=True).stdout
    assert head[:PAGE] == swapfile[:PAGE] and head[PAGE:] == bytes(len(swapfile) - PAGE)
    with open(zeroed, "rb") as f:
        f.seek(25 * M)
        assert f.read(PAGE) == facts["part"][:PAGE]  # type: ignore[index]


def test_ntfs_page_and_hibernation_files(tmp_path: Path) -> None:
    _need("mkntfs", "ntfs-3g", "ntfscat", "ntfsfix", "fusermount3")
    tree = tmp_path / "tree"
    (tree / "Windows").mkdir(parents=True)
    files = {
        "pagefile.sys": os.urandom(3 * M),
        "hiberfil.sys": os.urandom(2 * M),
        "Windows/pagefile.sys": os.urandom(M),  # not the root's: data like any other file
        "notes.txt": b"keep me\n" * 5000,
        "big.bin": os.urandom(2 * M),
    }
    for name, data in files.items():
        (tree / name).write_bytes(data)
    ntfs = tmp_path / "ntfs.fs"
    b.mkfs_ntfs(tree, ntfs, tmp_path / "mnt", 24)
    disk = b.new_disk(tmp_path / "mbr.img", 32 * M)
    b.write_mbr(disk, [(0x07, 2048, 24 * 2048)])
    b.place(disk, 1 * M, ntfs)

    scan = find_swap(_pread(disk), disk.stat().st_size)
    assert {a.what for a in scan.areas} == {"p1:/pagefile.sys", "p1:/hiberfil.sys"}, scan
    for name in ("pagefile.sys", "hiberfil.sys"):
        got = b""
        with open(disk, "rb") as f:
            for a in (a for a in scan.areas if a.what == f"p1:/{name}"):
                f.seek(a.offset)
                got += f.read(a.length)
        assert got[: len(files[name])] == files[name]
    zeroed = _zeroed_copy(disk, scan.areas, tmp_path / "zeroed.img")
    fs = _extract(zeroed, 1 * M, 24 * M, tmp_path / "p1.fs")
    subprocess.run(["ntfsfix", "-n", str(fs)], check=True, capture_output=True)
    for name in ("Windows/pagefile.sys", "notes.txt", "big.bin"):
        out = subprocess.run(["ntfscat", str(fs), name], check=True, capture_output=True).stdout
        assert out == files[name], name
    out = subprocess.run(["ntfscat", str(fs), "pagefile.sys"], check=True,
                         capture_output=True).stdout
    assert out == bytes(len(files["pagefile.sys"]))


def test_no_swap_and_unreadable_disks_exclude_nothing(tmp_path: Path) -> None:
    blank = b.new_disk(tmp_path / "blank.img", 8 * M)
    assert find_swap(_pread(blank), 8 * M).areas == []
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\x55\xaa" * (M // 2))
    scan = find_swap(_pread(junk), M)
    assert scan.areas == []


def test_runs_outside_the_volume_or_overlapping_are_refused() -> None:
    vol = Volume("p1", 1 * M, 8 * M, "ntfs", "partition", lambda: None)  # type: ignore[arg-type, return-value]
    outside = _checked_runs(vol, [(0, 4096), (8 * M, 4096)])
    assert outside == "a run at 8388608+4096 lies outside the volume"
    assert _checked_runs(vol, [(0, 8192), (4096, 4096)]) == "its runs overlap"
    assert _checked_runs(vol, [(8192, 4096), (0, 4096)]) == [(0, 4096), (8192, 4096)]
    # a record whose runs claim more than the file's allocated size is not believed
    assert isinstance(_clusters_to_runs([(10, 1000)], 4096, 4096, skip=0), str)
    # sparse runs are skipped; the first page of a Linux swap file is kept
    assert _clusters_to_runs([(None, 1), (5, 2)], 4096, 3 * 4096, skip=0) == [(5 * 4096, 8192)]
    assert _clusters_to_runs([(5, 3)], 4096, 3 * 4096, skip=PAGE) == [(6 * 4096, 8192)]


def _area_bytes(disk: Path, areas: list[SwapArea], what: str) -> bytes:
    got = b""
    with open(disk, "rb") as f:
        for a in sorted((a for a in areas if a.what == what), key=lambda a: a.offset):
            f.seek(a.offset)
            got += f.read(a.length)
    return got


def _swap_tree(root: Path, fstab: str) -> dict[str, bytes]:
    """A root holding ``/etc/fstab`` and swap-signed files (``mkswap``) at the paths it names,
    one at a default name, one signed file fstab does not name, one named but unsigned."""
    (root / "etc").mkdir(parents=True)
    (root / "etc/fstab").write_text(fstab)
    (root / "var/lib/swap").mkdir(parents=True)
    (root / "srv").mkdir()
    files = {
        "/swap.img": _mkswap_file(root / "swap.img", 2 * M, 11),
        "/var/lib/swap/area": _mkswap_file(root / "var/lib/swap/area", 3 * M, 12),
        "/srv/old-swap": _mkswap_file(root / "srv/old-swap", 2 * M, 13),  # not in fstab
    }
    (root / "srv/plain").write_bytes(os.urandom(2 * M))  # in fstab, but not swap-signed
    files["/srv/plain"] = (root / "srv/plain").read_bytes()
    return files


FSTAB = """# /etc/fstab: a guest's, with the kinds of line that are not swap files
UUID=0a1b2c3d-0000-4000-8000-00000000beef / ext4 errors=remount-ro 0 1
/dev/mapper/vg0-swap none swap sw 0 0
LABEL=swap2 none swap sw 0 0
/var/lib/swap/area none swap sw,pri=5 0 0
/srv/plain none swap sw 0 0
/srv/../etc/fstab none swap sw 0 0
/missing/file none swap sw 0 0
"""


@pytest.mark.parametrize("fs", ["ext4", "xfs"])
def test_swap_files_named_by_fstab_on_ext_and_xfs(fs: str, tmp_path: Path) -> None:
    """Besides ``/swapfile`` and ``/swap.img``, the files ``/etc/fstab`` names as swap are left
    out — each only with the swap signature; devices, labels, ``..`` and missing paths are
    ignored, a signed file fstab does not name is data."""
    _need("mkswap", "mke2fs" if fs == "ext4" else "mkfs.xfs")
    files = _swap_tree(tmp_path / "tree", FSTAB)
    image = tmp_path / f"{fs}.img"
    if fs == "ext4":
        b.mkfs_ext4(tmp_path / "tree", image, 24)
    else:
        b.mkfs_xfs(tmp_path / "tree", image)
    scan = find_swap(_pread(image), image.stat().st_size)
    assert {a.what for a in scan.areas} == {"whole:/swap.img", "whole:/var/lib/swap/area"}, scan
    for path in ("/swap.img", "/var/lib/swap/area"):
        # the areas hold exactly the file's bytes after its first page (the content is unique)
        assert _area_bytes(image, scan.areas, f"whole:{path}") == files[path][PAGE:]
    zeroed = _zeroed_copy(image, scan.areas, tmp_path / "zeroed.img")
    if fs == "ext4":
        subprocess.run(["e2fsck", "-fn", str(zeroed)], check=True, capture_output=True)
        for path in ("/srv/old-swap", "/srv/plain", "/etc/fstab"):
            out = subprocess.run(["debugfs", "-R", f"cat {path}", str(zeroed)], check=True,
                                 capture_output=True).stdout
            assert out == (files[path] if path in files else FSTAB.encode()), path
    else:
        subprocess.run(["xfs_repair", "-n", "-f", str(zeroed)], check=True, capture_output=True)


def test_a_hostile_fstab_names_at_most_sixteen_files(tmp_path: Path) -> None:
    from vmkeep.disks.swap import FSTAB_SWAP_FILES, _fstab_swap_files

    class _Fs:
        def __init__(self, text: str) -> None:
            self.text = text.encode()

        def get(self, path: str):  # type: ignore[no-untyped-def]
            import io

            assert path == "/etc/fstab"
            return type("I", (), {"open": lambda _: io.BytesIO(self.text)})()

    many = "".join(f"/s{i} none swap sw 0 0\n" for i in range(100))
    assert len(_fstab_swap_files(_Fs(many))) == FSTAB_SWAP_FILES
    assert _fstab_swap_files(_Fs("/my\\040swap none swap sw 0 0\n")) == ["/my swap"]
    assert _fstab_swap_files(_Fs("\xff\xfe garbage\n")) == []


def test_a_swap_lv_in_two_segments_is_followed_through_both(tmp_path: Path) -> None:
    """An LV extended by ``lvextend`` (two linear segments apart on the PV): its swap area is the
    two disk ranges after the first page, exactly the LV's bytes there; the data LV between the
    segments is untouched."""
    _need("mkswap")
    lv = tmp_path / "lvswap"
    swap_bytes = _mkswap_file(lv, 8 * M, 21)
    data = os.urandom(4 * M)
    disk = b.new_disk(tmp_path / "lvm.img", 40 * M)
    b.write_gpt(disk, [(b.LINUX_LVM, 2048, 2048 + 32 * 2048 - 1, "lvm")])
    # vg0/lvswap: PEs 0-2 then 7-11; vg0/lvdata: PEs 3-6, between the two
    pe0 = b.write_lvm_pv(disk, 1 * M, 32 * M, {"lvswap": [(0, 3), (7, 5)], "lvdata": (3, 4)})
    with open(disk, "r+b") as f:
        f.seek(pe0)
        f.write(swap_bytes[: 3 * M])
        f.seek(pe0 + 7 * M)
        f.write(swap_bytes[3 * M :])
        f.seek(pe0 + 3 * M)
        f.write(data)
    scan = find_swap(_pread(disk), disk.stat().st_size)
    assert scan.notes == [], scan
    assert [(a.offset, a.length) for a in scan.areas] == [
        (pe0 + PAGE, 3 * M - PAGE), (pe0 + 7 * M, 5 * M)], scan
    assert {a.what for a in scan.areas} == {"vg0/lvswap (swap partition)"}
    assert _area_bytes(disk, scan.areas, "vg0/lvswap (swap partition)") == swap_bytes[PAGE:]
    zeroed = _zeroed_copy(disk, scan.areas, tmp_path / "zeroed.img")
    with open(zeroed, "rb") as f:
        f.seek(pe0 + 3 * M)
        assert f.read(4 * M) == data
        f.seek(pe0)
        assert f.read(PAGE) == swap_bytes[:PAGE]


def test_the_search_reads_at_most_its_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                             ) -> None:
    """However much the guest's metadata would make the search read (an extent tree whose nodes
    all point at one child multiplies the work), it stops at its read budget: nothing more is
    excluded, a note says why, and not a byte beyond the budget is read."""
    _need("mkswap", "mke2fs")
    import vmkeep.disks.swap as swap_mod

    files = _swap_tree(tmp_path / "tree", FSTAB)
    image = tmp_path / "ext4.img"
    b.mkfs_ext4(tmp_path / "tree", image, 24)
    assert {a.what for a in find_swap(_pread(image), image.stat().st_size).areas} == {
        "whole:/swap.img", "whole:/var/lib/swap/area"} and files
    reads: list[int] = []

    def counting(offset: int, length: int) -> bytes:
        reads.append(length)
        return _pread(image)(offset, length)

    for budget in (0, 8192, 64 * 1024):
        reads.clear()
        monkeypatch.setattr(swap_mod, "READ_BUDGET", budget)
        scan = find_swap(counting, image.stat().st_size)
        assert scan.areas == [] and scan.notes, (budget, scan)
        assert sum(reads) <= budget, (budget, sum(reads))
