"""Snapshot delta chains (:mod:`vmkeep.disks.vmdk.deltas`) through ``open_disk``: crafted COWD
(``VMFSSPARSE``) and SESparse files over both transports, the composed disk against a model,
request coalescing, threads, and hostile chains (parent hints, cycles, depth, capacities,
offsets past the end of a file)."""

from __future__ import annotations

import itertools
import math
import random
import struct
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.vsphere.vsphere_helpers import Cert, FakeSession, RangeServer
from vmkeep.disks.errors import UnsafeDescriptorError
from vmkeep.disks.vmdk.deltas import MAX_DEPTH
from vmkeep.vsphere.errors import NotFound, UnsupportedDisk
from vmkeep.vsphere.inventory import VirtualDisk
from vmkeep.vsphere.tls import TLSOptions, build_ssl_context
from vmkeep.vsphere.transports import ExtentReader, open_disk

S = 512
CAP = 3 * 1024 * 1024 + 64 * 1024  # not a multiple of a 64 KiB COWD table's coverage
SES_CAP = 20 * 1024 * 1024  # two SESparse grain tables (16 MiB each)


# -- crafting ---------------------------------------------------------------------------------
def descriptor(kind: str, extent: str, sectors: int, *, parent: str | None = None,
               cid: str = "0000000a", parent_cid: str = "ffffffff") -> bytes:
    lines = ["# Disk DescriptorFile", "version=1", f"CID={cid}", f"parentCID={parent_cid}",
             'createType="{}"'.format({"VMFS": "vmfs", "VMFSSPARSE": "vmfsSparse",
                                       "SESPARSE": "seSparse"}.get(kind, kind.lower()))]
    if parent is not None:
        lines.append(f'parentFileNameHint="{parent}"')
    lines += ["# Extent description", f'RW {sectors} {kind} "{extent}"', ""]
    return "\n".join(lines).encode()


def cowd(capacity: int, grains: dict[int, bytes], grain_secs: int, seed: int = 0) -> bytes:
    """A COWD file holding ``grains`` (grain number → grain bytes), grains stored in a shuffled
    order (physically non-contiguous, as a real redo log is after random writes)."""
    cap_secs = capacity // S
    n_gd = math.ceil(cap_secs / (4096 * grain_secs))
    free = 4 + math.ceil(n_gd * 4 / S)
    gd = [0] * n_gd
    tables: dict[int, list[int]] = {}
    for g in sorted(grains):
        if g // 4096 not in tables:
            tables[g // 4096] = [0] * 4096
            gd[g // 4096] = free
            free += 4096 * 4 // S
    order = sorted(grains)
    random.Random(seed).shuffle(order[: len(order) // 2])
    data = bytearray()
    data_start = free
    for g in order:
        tables[g // 4096][g % 4096] = free
        data += grains[g].ljust(grain_secs * S, b"\0")
        free += grain_secs
    head = struct.pack("<4sIIIIIII", b"COWD", 1, 3, cap_secs, grain_secs, 4, n_gd, free)
    out = bytearray(head.ljust(4 * S, b"\0"))
    out += struct.pack(f"<{n_gd}I", *gd)
    out = out.ljust(min(list(gd_ for gd_ in gd if gd_) or [data_start]) * S, b"\0")
    for index in sorted(tables):
        out = out.ljust(gd[index] * S, b"\0")
        out += struct.pack("<4096I", *tables[index])
    out = out.ljust(data_start * S, b"\0")
    return bytes(out + data)


SES_UNMAPPED, SES_ZERO, SES_DATA = 1, 2, 3


def sesparse(capacity: int, grains: dict[int, bytes | int], *, dirty: bool = False) -> bytes:
    """An SESparse file (4 KiB grains, 4096-entry tables): ``grains`` maps grain → data, or
    :data:`SES_ZERO` / :data:`SES_UNMAPPED` for those grain types."""
    cap_secs, gs = capacity // S, 8
    n_tables = math.ceil(cap_secs / (4096 * gs))
    vol_off, gd_off, gd_secs = 1, 2, 1
    gt_off, gt_secs = gd_off + gd_secs, n_tables * 64
    grains_off = gt_off + gt_secs
    gd = [0] * 64
    for t in range(n_tables):
        gd[t] = 0x1000000000000000 | t
    tables = [[0] * 4096 for _ in range(n_tables)]
    data = bytearray()
    cluster = 0
    for g, v in sorted(grains.items()):
        if isinstance(v, bytes):
            entry = 0x3000000000000000 | ((cluster & 0xFFF) << 48) | (cluster >> 12)
            data += v.ljust(gs * S, b"\0")
            cluster += 1
        else:
            entry = v << 60
        tables[g // 4096][g % 4096] = entry
    fields = [0xCAFEBABE, 0x200000001, cap_secs, gs, 64, 0, 0, 0, 0, 0,
              vol_off, 1, 0, 0, 0, 0, gd_off, gd_secs, gt_off, gt_secs, 0, 0, 0, 0,
              grains_off, cluster * gs]
    out = bytearray(struct.pack(f"<{len(fields)}Q", *fields).ljust(S, b"\0"))
    out += struct.pack("<4Q", 0xCAFECAFE, 0, 0, int(dirty)).ljust(S, b"\0")
    out += struct.pack("<64Q", *gd)
    for table in tables:
        out += struct.pack("<4096Q", *table)
    assert len(out) == grains_off * S
    return bytes(out + data)


def compose(base: bytes, layers: list[dict[int, bytes | int]], grain: list[int]) -> bytes:
    """The model: apply layers oldest first (``grain`` = bytes per grain of each layer)."""
    disk = bytearray(base)
    for held, gb in zip(layers, grain, strict=True):
        for g, v in held.items():
            chunk = v if isinstance(v, bytes) else bytes(gb)  # zero and unmapped: zeros
            end = min(len(disk), g * gb + gb)
            disk[g * gb : end] = chunk[: end - g * gb].ljust(end - g * gb, b"\0")
    return bytes(disk)


def rnd(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def some_grains(capacity: int, gb: int, fraction: float, seed: int) -> dict[int, bytes]:
    r = random.Random(seed)
    n = math.ceil(capacity / gb)
    return {g: r.randbytes(gb) for g in sorted(r.sample(range(n), int(n * fraction)))}


def disk_info(capacity: int, name: str = "vm-000002.vmdk") -> VirtualDisk:
    return VirtualDisk(
        key=2000, label="Hard disk 1", capacity=capacity, file_name=f"[ds1] vm/{name}",
        datastore="ds1", thin=True, disk_mode="persistent", change_id=None,
        controller_key=1000, unit_number=0,
    )


# -- a datastore served both ways -------------------------------------------------------------
class Datastore:
    """Files of ``vm/`` on a local mount and behind the Range server; open_disk both ways."""

    def __init__(self, root: Path, server: RangeServer, session: FakeSession) -> None:
        self.root, self.server, self.session = root, server, session
        (root / "vm").mkdir()

    def put(self, name: str, data: bytes) -> None:
        (self.root / "vm" / name).write_bytes(data)
        self.server.files[f"ds1/vm/{name}"] = data

    def open(self, transport: str, disk: VirtualDisk) -> ExtentReader:
        if transport == "direct":
            return open_disk(None, disk, "direct", datastore_mounts={"ds1": str(self.root)})
        return open_disk(self.session, disk, "https", datacenter="DC0")  # type: ignore[arg-type]

    def both(self, disk: VirtualDisk) -> list[ExtentReader]:
        return [self.open("https", disk), self.open("direct", disk)]


@pytest.fixture
def ds(range_server: RangeServer, tls_cert: Cert, tmp_path: Path) -> Datastore:
    ctx = build_ssl_context(TLSOptions(thumbprint=tls_cert.thumbprint))
    return Datastore(tmp_path, range_server, FakeSession(range_server.port, ctx))


def base_disk(ds: Datastore, capacity: int, cid: str = "0000000a") -> bytes:
    data = rnd(capacity, 1)
    ds.put("vm.vmdk", descriptor("VMFS", "vm-flat.vmdk", capacity // S, cid=cid))
    ds.put("vm-flat.vmdk", data)
    return data


def cowd_chain(ds: Datastore) -> tuple[bytes, dict[int, bytes], dict[int, bytes]]:
    """base ← vm-000001 (64 KiB grains, like the lab) ← vm-000002 (512-byte grains, like ESX)."""
    base = base_disk(ds, CAP)
    first = some_grains(CAP, 65536, 0.4, 2)
    second = some_grains(CAP, S, 0.05, 3)
    second.update({g: rnd(S, g) for g in range(100, 400)})  # a long run of written sectors
    ds.put("vm-000001.vmdk", descriptor("VMFSSPARSE", "vm-000001-delta.vmdk", CAP // S,
                                        parent="vm.vmdk", cid="0000000b", parent_cid="0000000a"))
    ds.put("vm-000001-delta.vmdk", cowd(CAP, first, 128, seed=4))
    ds.put("vm-000002.vmdk", descriptor("VMFSSPARSE", "vm-000002-delta.vmdk", CAP // S,
                                        parent="vm-000001.vmdk", cid="0000000c",
                                        parent_cid="0000000b"))
    ds.put("vm-000002-delta.vmdk", cowd(CAP, second, 1, seed=5))
    return compose(base, [first, second], [65536, S]), first, second  # type: ignore[list-item]


# -- reading ----------------------------------------------------------------------------------
def test_cowd_chain_reads_the_composed_disk_over_both_transports(ds: Datastore) -> None:
    want, _, _ = cowd_chain(ds)
    r = random.Random(9)
    for reader in ds.both(disk_info(CAP)):
        assert reader.size == CAP and reader.chain is not None and reader.chain.depth == 2
        assert reader.read() == want
        for _ in range(60):
            off = r.randrange(CAP)
            n = r.randrange(1, 300_000)
            assert reader.pread(off, n) == want[off : off + n], (off, n)
        reader.seek(CAP - 700)
        assert reader.read(5000) == want[-700:] and reader.read(1) == b""
        got = dict(reader.read_extents([(0, CAP)], block=1 << 20))
        assert b"".join(got[o] for o in sorted(got)) == want
        reader.close()


def test_reads_are_coalesced_into_few_range_requests(ds: Datastore) -> None:
    want, _, _ = cowd_chain(ds)
    reader = ds.open("https", disk_info(CAP))
    ds.server.requests.clear()
    # sectors 100..399 of the top layer are one physically contiguous run of 300 grains
    assert reader.pread(100 * S, 300 * S) == want[100 * S : 400 * S]
    gets = [p for m, p, _ in ds.server.requests if m == "GET"]
    assert len(gets) == 1 and "vm-000002-delta" in gets[0]
    ds.server.requests.clear()
    assert reader.read() == want
    gets = [p for m, p, _ in ds.server.requests if m == "GET"]
    assert len(gets) < 60, len(gets)  # grains of ~900 scattered writes, tables cached
    ds.server.requests.clear()
    assert reader.pread(0, CAP) == want  # grain tables are cached: data requests only
    assert len(ds.server.requests) <= len(gets)


def test_concurrent_reads_from_threads(ds: Datastore) -> None:
    want, _, _ = cowd_chain(ds)
    errors: list[BaseException] = []

    def worker(seed: int, reader: ExtentReader) -> None:
        r = random.Random(seed)
        try:
            for _ in range(40):
                off, n = r.randrange(CAP), r.randrange(1, 200_000)
                assert reader.pread(off, n) == want[off : off + n]
        except BaseException as exc:
            errors.append(exc)

    for reader in ds.both(disk_info(CAP)):

        threads = [threading.Thread(target=worker, args=(i, reader)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]


def test_allocated_extents_of_the_top_layers(ds: Datastore) -> None:
    _, first, second = cowd_chain(ds)
    chain = ds.open("direct", disk_info(CAP)).chain
    assert chain is not None

    def cover(extents: list[tuple[int, int]]) -> set[int]:
        return {s for off, n in extents for s in range(off // S, (off + n) // S)}

    top = {g for g in second}
    assert cover(chain.allocated(1)) == top
    both = top | {s for g in first for s in range(g * 128, min(g * 128 + 128, CAP // S))}
    assert cover(chain.allocated()) == both
    extents = chain.allocated()
    assert all(a[0] + a[1] < b[0] for a, b in itertools.pairwise(extents))


def test_sesparse_delta_over_a_cowd_delta(ds: Datastore) -> None:
    base = base_disk(ds, SES_CAP)
    mid = some_grains(SES_CAP, 65536, 0.3, 6)
    top: dict[int, bytes | int] = dict(some_grains(SES_CAP, 4096, 0.05, 7))
    n = SES_CAP // 4096
    rng = random.Random(8)
    for g in rng.sample(range(n), 200):
        top.setdefault(g, rng.choice([SES_ZERO, SES_UNMAPPED]))
    top.update({4096 + i: rnd(4096, i) for i in range(64)})  # in the second grain table
    ds.put("vm-000001.vmdk", descriptor("VMFSSPARSE", "vm-000001-delta.vmdk", SES_CAP // S,
                                        parent="vm.vmdk", cid="0000000b", parent_cid="0000000a"))
    ds.put("vm-000001-delta.vmdk", cowd(SES_CAP, mid, 128))
    ds.put("vm-000002.vmdk", descriptor("SESPARSE", "vm-000002-sesparse.vmdk", SES_CAP // S,
                                        parent="vm-000001.vmdk", cid="0000000c",
                                        parent_cid="0000000b"))
    ds.put("vm-000002-sesparse.vmdk", sesparse(SES_CAP, top))
    want = compose(base, [mid, top], [65536, 4096])  # type: ignore[list-item]
    assert want != compose(base, [mid], [65536])  # type: ignore[list-item]
    for reader in ds.both(disk_info(SES_CAP)):
        assert reader.read() == want
        assert reader.pread(4096 * 4096 + 100, 70_000) == want[4096 * 4096 + 100 :][:70_000]
        chain = reader.chain
        assert chain is not None
        held = {off // 4096 for off, ln in chain.allocated(1) for off in range(off, off + ln, 4096)}
        assert held == set(top)  # unmapped grains too: they differ from the parent
        reader.close()


def test_sesparse_journal_or_other_versions_are_unsupported(ds: Datastore) -> None:
    base_disk(ds, SES_CAP)
    ds.put("vm-000002.vmdk", descriptor("SESPARSE", "d.vmdk", SES_CAP // S, parent="vm.vmdk",
                                        parent_cid="0000000a"))
    ds.put("d.vmdk", sesparse(SES_CAP, {1: rnd(4096, 1)}, dirty=True))
    with pytest.raises(UnsupportedDisk, match="journal"):
        ds.open("direct", disk_info(SES_CAP))
    data = bytearray(sesparse(SES_CAP, {}))
    data[24:32] = struct.pack("<Q", 16)  # 8 KiB grains: a format we have not seen
    ds.put("d.vmdk", bytes(data))
    with pytest.raises(UnsupportedDisk, match="grain 16"):
        ds.open("https", disk_info(SES_CAP))
    for at in (8 * 6, 8 * 9, 400):  # reserved1, reserved4, padding: qemu refuses these too
        data = bytearray(sesparse(SES_CAP, {}))
        data[at] = 1
        ds.put("d.vmdk", bytes(data))
        with pytest.raises(UnsafeDescriptorError, match="reserved"):
            ds.open("direct", disk_info(SES_CAP))


# -- hostile and broken chains ----------------------------------------------------------------
def top(ds: Datastore, parent: str, *, parent_cid: str = "0000000a", sectors: int = CAP // S,
        delta: bytes | None = None, name: str = "vm-000002.vmdk") -> None:
    extent = name.replace(".vmdk", "-delta.vmdk")
    ds.put(name, descriptor("VMFSSPARSE", extent, sectors, parent=parent, cid="0000000c",
                            parent_cid=parent_cid))
    ds.put(extent, cowd(CAP, {1: rnd(65536, 2)}, 128) if delta is None else delta)


def refused(ds: Datastore, error: type[Exception], match: str,
            disk: VirtualDisk | None = None) -> None:
    for transport in ("https", "direct"):
        with pytest.raises(error, match=match) as info:
            ds.open(transport, disk or disk_info(CAP))
        if error is UnsafeDescriptorError:
            assert info.value.exit_code == 14


@pytest.mark.parametrize("hint", [
    "../x.vmdk", "/vmfs/volumes/ds2/vm/vm.vmdk", "sub/vm.vmdk", "..", "[ds2] vm/vm.vmdk",
    "vm\\..\\vm.vmdk", "C:vm.vmdk", "vm.vmdk\x00.txt",
])
def test_parent_hint_must_be_a_bare_name(ds: Datastore, hint: str) -> None:
    base_disk(ds, CAP)
    top(ds, hint)
    # a NUL is refused by the descriptor parser before any name is looked at
    refused(ds, UnsafeDescriptorError, "NUL byte" if "\x00" in hint else "plain file name")


def test_unsafe_extent_name_in_a_parent(ds: Datastore) -> None:
    base_disk(ds, CAP)
    ds.put("mid.vmdk", descriptor("VMFSSPARSE", "../../etc/passwd", CAP // S, parent="vm.vmdk",
                                  cid="0000000b", parent_cid="0000000a"))
    top(ds, "mid.vmdk", parent_cid="0000000b")
    refused(ds, UnsafeDescriptorError, "plain file name")


def test_cycles_are_refused(ds: Datastore) -> None:
    base_disk(ds, CAP)
    top(ds, "a.vmdk", parent_cid="0000000a")
    ds.put("a.vmdk", descriptor("VMFSSPARSE", "a-delta.vmdk", CAP // S, parent="b.vmdk",
                                cid="0000000a", parent_cid="0000000a"))
    ds.put("a-delta.vmdk", cowd(CAP, {}, 128))
    ds.put("b.vmdk", descriptor("VMFSSPARSE", "b-delta.vmdk", CAP // S, parent="a.vmdk",
                                cid="0000000a", parent_cid="0000000a"))
    ds.put("b-delta.vmdk", cowd(CAP, {}, 128))
    refused(ds, UnsafeDescriptorError, "loops back")
    top(ds, "vm-000002.vmdk", parent_cid="0000000c")  # its own parent
    refused(ds, UnsafeDescriptorError, "loops back")


def test_chain_depth_is_bounded(ds: Datastore) -> None:
    cap = 256 * 1024
    base = base_disk(ds, cap)
    empty = cowd(cap, {}, 128)
    for i in range(1, MAX_DEPTH + 2):
        parent = "vm.vmdk" if i == 1 else f"d{i - 1}.vmdk"
        ds.put(f"d{i}.vmdk", descriptor("VMFSSPARSE", f"d{i}-delta.vmdk", cap // S,
                                        parent=parent, cid=f"{i:08x}",
                                        parent_cid="0000000a" if i == 1 else f"{i - 1:08x}"))
        ds.put(f"d{i}-delta.vmdk", empty)
    assert ds.open("direct", disk_info(cap, f"d{MAX_DEPTH}.vmdk")).read() == base
    too_deep = disk_info(cap, f"d{MAX_DEPTH + 1}.vmdk")
    refused(ds, UnsafeDescriptorError, f"more than {MAX_DEPTH}", too_deep)


def test_capacities_must_agree(ds: Datastore) -> None:
    base_disk(ds, CAP)
    top(ds, "vm.vmdk", sectors=CAP // S + 128, delta=cowd(CAP + 65536, {}, 128))
    refused(ds, UnsafeDescriptorError, "vm.vmdk: describes", disk_info(CAP + 65536))  # the base
    refused(ds, UnsafeDescriptorError, "vSphere says")  # the top descriptor
    top(ds, "vm.vmdk")
    top(ds, "vm.vmdk", delta=cowd(CAP + 65536, {}, 128))  # sparse header disagrees
    refused(ds, UnsafeDescriptorError, "sparse header says")


def test_parent_modified_since_the_snapshot(ds: Datastore) -> None:
    base_disk(ds, CAP, cid="12345678")
    top(ds, "vm.vmdk", parent_cid="0000000a")
    refused(ds, UnsafeDescriptorError, "parent CID")


def patched(data: bytes, offset: int, fmt: str, *values: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, *values)
    return bytes(out)


@pytest.mark.parametrize(("what", "mutate", "match"), [
    ("table past EOF", lambda d: patched(d, 4 * S, "<I", len(d) // S), "past the end"),
    ("table in header", lambda d: patched(d, 4 * S, "<I", 1), "overlaps the header"),
    ("grain past EOF", lambda d: patched(d, 5 * S + 4, "<I", len(d) // S - 10), "outside"),
    ("directory past EOF", lambda d: patched(d, 20, "<I", len(d) // S), "outside the file"),
    ("huge directory", lambda d: patched(d, 24, "<I", 0xFFFFFFFF), "grain directory of"),
    ("zero grain size", lambda d: patched(d, 16, "<I", 0), "grain size"),
    ("bad magic", lambda d: b"KDMV" + d[4:], "without a COWD header"),
    ("truncated", lambda d: d[: 5 * S + 100], "past the end"),
])
def test_corrupt_cowd_offsets(ds: Datastore, what: str, mutate: Callable[[bytes], bytes],
                              match: str) -> None:
    base_disk(ds, CAP)
    good = cowd(CAP, {1: rnd(65536, 1)}, 128)
    top(ds, "vm.vmdk", delta=mutate(good))
    for transport in ("https", "direct"):
        with pytest.raises(UnsafeDescriptorError, match=match):
            ds.open(transport, disk_info(CAP)).read()


def test_corrupt_sesparse_entries(ds: Datastore) -> None:
    base_disk(ds, SES_CAP)
    good = sesparse(SES_CAP, {3: rnd(4096, 3)})
    ds.put("vm-000002.vmdk", descriptor("SESPARSE", "s.vmdk", SES_CAP // S, parent="vm.vmdk",
                                        parent_cid="0000000a"))
    for data, match in [
        (patched(good, 2 * S, "<Q", 0x2000000000000000), "bad SESparse directory entry"),
        (patched(good, 2 * S, "<Q", 0x1000000000000000 | 999), "past the end"),
        (patched(good, 3 * S + 3 * 8, "<Q", 0x3000000000000000 | 5), "outside the data area"),
        (patched(good, 3 * S + 3 * 8, "<Q", 0x7000000000000000), "corrupt grain table"),
        (patched(good, 0, "<Q", 0xCAFEBABF), "without an SESparse header"),
        (patched(good, S, "<Q", 1), "volatile header"),
    ]:
        ds.put("s.vmdk", data)
        for transport in ("https", "direct"):
            with pytest.raises(UnsafeDescriptorError, match=match):
                ds.open(transport, disk_info(SES_CAP)).read()


def test_unsupported_and_missing_layers(ds: Datastore) -> None:
    base_disk(ds, CAP)
    ds.put("vm-000002.vmdk", descriptor("SPARSE", "h.vmdk", CAP // S, parent="vm.vmdk",
                                        parent_cid="0000000a"))
    refused(ds, UnsupportedDisk, "SPARSE extents")
    top(ds, "gone.vmdk")
    refused(ds, NotFound, "gone|404")
    ds.put("raw.vmdk", b"\0" * CAP)
    top(ds, "raw.vmdk")
    refused(ds, UnsupportedDisk, "not a text descriptor")
