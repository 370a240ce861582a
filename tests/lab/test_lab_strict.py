"""The strict lab (the default, ``esxsim/strict.go``) behaves like a real vCenter's HTTP side:
datacenter inside a folder, per-host endpoints with their own certificates, lock-owner 500s,
one-time service tickets scoped to URL and method, per-host 503 throttling, Range ignored on
request, and guest transfers served by the VM's host.

VMs used: linux01 (running on esx01; reads, one guest file under /home/alice), small05 (reads
only); small04 gets a snapshot that is removed again.
"""

from __future__ import annotations

import http.client
import ssl
import urllib.error
import urllib.request

import pytest
from pyVmomi import vim, vmodl

from tests.lab.lab_helpers import (
    find_vm,
    flat_name,
    folder_get,
    host_context,
    host_entry,
    host_get,
    host_url,
    remove_all_snapshots,
    service_ticket,
    snapshot,
    vdisks,
)

pytestmark = pytest.mark.lab

#: a read this long never fits in loopback's socket buffers (rmem up to 32 MiB, wmem 4 MiB)
HELD_BYTES = 128 << 20


def _status(fn) -> int:
    try:
        fn()
    except urllib.error.HTTPError as exc:
        return exc.code
    return 200


def test_datacenter_sits_in_a_folder_and_a_second_one_exists(esx_lab, si):
    assert esx_lab.datacenter == "Region/DC1"
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.Datacenter], True)
    try:
        dcs = {dc.name: dc.parent.name for dc in view.view}
    finally:
        view.Destroy()
    assert dcs["DC1"] == "Region" and "DC2" in dcs
    descriptor = esx_lab.vm("tmpl-linux")["disks"][0]["datastore_path"]  # a template: unlocked
    assert folder_get(esx_lab, descriptor).startswith(b"# Disk DescriptorFile")

    def with_dc(dc: str):
        lab = type("L", (), {**{k: getattr(esx_lab, k) for k in ("host", "port", "user",
                                                                   "password")},
                             "datacenter": dc, "ssl_context": esx_lab.ssl_context})
        return lambda: folder_get(lab, descriptor)

    assert _status(with_dc("DC1")) == 404  # the bare name is not an inventory path
    assert _status(with_dc("")) == 404  # two datacenters: no default


def test_each_host_has_its_own_endpoint_and_certificate(esx_lab, si):
    ports, certs = set(), set()
    content = si.RetrieveContent()
    view = content.viewManager.CreateContainerView(content.rootFolder, [vim.HostSystem], True)
    try:
        by_name = {h.name: h for h in view.view}
    finally:
        view.Destroy()
    for entry in esx_lab.hosts:
        h = by_name[entry["name"]]
        pem = bytes(b & 0xFF for b in h.config.certificate).decode()
        assert pem == entry["cert_pem"]
        assert h.summary.config.port == entry["port"] != esx_lab.port
        with socket_to(entry) as tls:
            der = tls.getpeercert(binary_form=True)
        assert der == ssl.PEM_cert_to_DER_cert(pem)
        ports.add(entry["port"])
        certs.add(pem)
    assert len(ports) == len(certs) == len(esx_lab.hosts) == 3


class socket_to:
    def __init__(self, entry):
        self.entry = entry

    def __enter__(self):
        import socket

        ctx = ssl.create_default_context(cadata=self.entry["cert_pem"])
        ctx.check_hostname = False
        raw = socket.create_connection((self.entry["address"], self.entry["port"]), timeout=30)
        self.tls = ctx.wrap_socket(raw)
        return self.tls

    def __exit__(self, *exc):
        self.tls.close()


def test_running_disk_is_only_downloadable_from_its_host(esx_lab, si):
    vm = esx_lab.vm("linux01")
    assert vm["host"] == "esx01.lab.local"
    flat = flat_name(vm["disks"][0]["datastore_path"])
    # vCenter hands each request to a pseudo-random host: some ranges land elsewhere -> 500
    codes = [
        _status(lambda i=i: folder_get(esx_lab, flat, i * 4096, i * 4096 + 9))
        for i in range(12)
    ]
    assert 500 in codes and set(codes) <= {200, 500}
    expected = esx_lab.read_disk("linux01", 0, offset=0, length=4096)
    # the owner reads it, always; another host never
    for _ in range(3):
        assert host_get(esx_lab, si, "esx01.lab.local", flat, 0, 4095) == expected
    assert _status(lambda: host_get(esx_lab, si, "esx02.lab.local", flat, 0, 9)) == 500
    with pytest.raises(urllib.error.HTTPError) as info:
        host_get(esx_lab, si, "esx03.lab.local", flat, 0, 9)
    assert b"only downloadable from the lock owner" in info.value.read()


def test_under_a_snapshot_the_frozen_base_reads_anywhere_the_delta_only_on_its_host(esx_lab, si):
    vm = find_vm(si, "small04")
    remove_all_snapshots(vm)
    try:
        snap = snapshot(vm, "strict")
        base = vdisks(snap.config)[0].backing.fileName
        delta = vdisks(vm.config)[0].backing.fileName
        assert base != delta
        owner = esx_lab.vm("small04")["host"]
        other = next(h["name"] for h in esx_lab.hosts if h["name"] != owner)
        base_flat = flat_name(base)
        assert len(host_get(esx_lab, si, other, base_flat, 0, 511)) == 512
        assert all(
            len(folder_get(esx_lab, base_flat, i * 512, i * 512 + 511)) == 512 for i in range(6)
        )
        assert _status(lambda: host_get(esx_lab, si, other, delta)) == 500
        assert host_get(esx_lab, si, owner, delta).startswith(b"# Disk DescriptorFile")
    finally:
        remove_all_snapshots(vm)


def test_service_ticket_is_one_time_and_scoped_to_url_and_method(esx_lab, si):
    flat = flat_name(esx_lab.vm("linux01")["disks"][0]["datastore_path"])
    host = "esx01.lab.local"
    url = host_url(esx_lab, host, flat)
    ticket = service_ticket(si, url)
    assert host_get(esx_lab, si, host, flat, 0, 9, ticket=ticket)
    # used once: gone
    assert _status(lambda: host_get(esx_lab, si, host, flat, 0, 9, ticket=ticket)) == 401
    # another URL (same host, other file) or another method: refused
    other = esx_lab.vm("linux01")["disks"][0]["datastore_path"]
    assert _status(lambda: host_get(esx_lab, si, host, other, ticket=service_ticket(si, url))) \
        == 401
    head_ticket = service_ticket(si, url, "httpHead")
    assert _status(lambda: host_get(esx_lab, si, host, flat, 0, 9, ticket=head_ticket)) == 401
    # no ticket, or the vCenter session's basic credentials: refused by the host
    req = urllib.request.Request(url, headers={"Range": "bytes=0-9"})
    assert _status(lambda: urllib.request.urlopen(req, context=host_context(esx_lab, host),
                                                  timeout=30)) == 401
    # HEAD with an httpHead ticket works
    h = host_entry(esx_lab, host)
    conn = http.client.HTTPSConnection(h["address"], h["port"], timeout=30,
                                       context=host_context(esx_lab, host))
    path = url.split(f":{h['port']}", 1)[1]
    conn.request("HEAD", path,
                 headers={"Cookie": f"vmware_cgi_ticket={service_ticket(si, url, 'httpHead')}"})
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 200 and int(resp.getheader("Content-Length")) > 0


def test_more_than_four_concurrent_reads_per_host_get_503_with_retry_after(esx_lab, si):
    """Four reads held open on one host, a fifth is 503 with Retry-After: 1.  The four are held
    by state, not by time: each asks for 128 MiB and leaves its body unread, so the host blocks
    writing it (more than loopback's socket buffers hold) and keeps its slot, however fast or
    loaded the machine."""
    flat = flat_name(esx_lab.vm("linux01")["disks"][0]["datastore_path"])
    host = "esx01.lab.local"
    held: list[http.client.HTTPResponse] = []
    try:
        for _ in range(4):
            url = host_url(esx_lab, host, flat)
            req = urllib.request.Request(url, headers={
                "Cookie": f"vmware_cgi_ticket={service_ticket(si, url)}",
                "Range": f"bytes=0-{HELD_BYTES - 1}",
            })
            held.append(urllib.request.urlopen(req, context=host_context(esx_lab, host),
                                               timeout=300))
        with pytest.raises(urllib.error.HTTPError) as busy:
            host_get(esx_lab, si, host, flat, 0, (1 << 20) - 1, timeout=300)
        assert (busy.value.code, busy.value.headers.get("Retry-After")) == (503, "1")
        for resp in held:  # the four are being served
            assert resp.status == 206 and len(resp.read(1 << 20)) == 1 << 20
    finally:
        for resp in held:
            resp.close()


def test_range_ignored_fault_answers_the_whole_file(esx_lab, si):
    flat = flat_name(esx_lab.vm("small05")["disks"][0]["datastore_path"])
    size = esx_lab.vm("small05")["disks"][0]["capacity"]
    with esx_lab.fault("ds_norange", "small05", count=1):
        host = esx_lab.vm("small05")["host"]
        url = host_url(esx_lab, host, flat)
        req = urllib.request.Request(url, headers={
            "Range": "bytes=0-9", "Cookie": f"vmware_cgi_ticket={service_ticket(si, url)}"})
        with urllib.request.urlopen(req, context=host_context(esx_lab, host), timeout=60) as r:
            assert r.status == 200
            assert int(r.headers["Content-Length"]) == size


def test_guest_transfers_are_served_by_the_vms_host_with_its_certificate(esx_lab, si):
    vm = find_vm(si, "linux01")
    creds = vim.vm.guest.NamePasswordAuthentication(username="root", password="x")
    fm = si.content.guestOperationsManager.fileManager
    url = fm.InitiateFileTransferToGuest(vm, creds, "/home/alice/strict.txt",
                                         vim.vm.guest.FileManager.FileAttributes(), 5, True)
    owner = host_entry(esx_lab, esx_lab.vm("linux01")["host"])
    assert url.startswith(f"https://*:{owner['port']}/guestFile?")
    real = url.replace("*", owner["address"], 1)
    req = urllib.request.Request(real, data=b"hello", method="PUT")
    with urllib.request.urlopen(req, context=host_context(esx_lab, owner["name"]),
                                timeout=60) as r:
        assert r.status == 200
    # vCenter does not serve guest transfers, and the vCenter certificate is not the host's
    info = fm.InitiateFileTransferFromGuest(vm, creds, "/home/alice/strict.txt")
    on_vc = info.url.replace(f"*:{owner['port']}", f"127.0.0.1:{esx_lab.port}", 1)
    assert _status(lambda: urllib.request.urlopen(on_vc, context=esx_lab.ssl_context(),
                                                  timeout=60)) == 404
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(info.url.replace("*", owner["address"], 1),
                               context=esx_lab.ssl_context(), timeout=60)
    with urllib.request.urlopen(info.url.replace("*", owner["address"], 1),
                                context=host_context(esx_lab, owner["name"]), timeout=60) as r:
        assert r.read() == b"hello"


def test_lenient_lab_keeps_the_old_behaviour_for_debugging(tmp_path):
    """``vmkeep lab up --lenient``: bare datacenter names and any route to a running disk."""
    from vmkeep.lab import runner

    info = runner.up(n_small=1, state=tmp_path / "lenient", lenient=True)
    try:
        assert info.lenient and runner.status(tmp_path / "lenient").lenient
        flat = flat_name(next(v for v in info.vms if v["name"] == "linux01")["disks"][0]
                         ["datastore_path"])
        lab = type("L", (), {"host": info.host, "port": info.port, "user": info.user,
                             "password": info.password, "datacenter": "DC1",
                             "ssl_context": lambda self: ssl.create_default_context(
                                 cafile=info.cafile)})()
        assert all(len(folder_get(lab, flat, i * 4096, i * 4096 + 9)) == 10 for i in range(12))
    finally:
        runner.down(tmp_path / "lenient")


def test_a_vm_on_an_unknown_datastore_is_refused_and_nothing_is_left(esx_lab, si):
    """vSphere answers InvalidDatastorePath (stock vcsim panicked and left a nameless VM)."""
    from pyVim.task import WaitForTask

    host = find_vm(si, "small04").runtime.host
    dc = host.parent
    while not isinstance(dc, vim.Datacenter):
        dc = dc.parent
    before = {vm.name for vm in dc.vmFolder.childEntity}
    spec = vim.vm.ConfigSpec(name="on-no-datastore", guestId="otherGuest64",
                             files=vim.vm.FileInfo(vmPathName="[no-such-datastore]"))
    with pytest.raises(vim.fault.InvalidDatastorePath) as refused:
        WaitForTask(dc.vmFolder.CreateVM_Task(spec, host.parent.resourcePool, host))
    assert refused.value.datastorePath == "[no-such-datastore]"
    assert {vm.name for vm in dc.vmFolder.childEntity} == before


def test_networks_are_a_real_sites_and_a_nic_on_a_network_its_host_lacks_is_refused(esx_lab, si):
    """Hosts see "VM Network" and the distributed port group "dvpg-prod"; only esx03 has "Backup
    LAN".  A new VM's adapter on a network its host does not see is refused as vSphere does
    (InvalidDeviceSpec; stock vcsim dereferenced a nil network) and nothing is left."""
    from pyVim.task import WaitForTask

    hosts = {h.name: h for h in si.content.viewManager.CreateContainerView(
        si.content.rootFolder, [vim.HostSystem], True).view}
    seen = {name: {n.name for n in h.network} for name, h in hosts.items()}
    assert all({"VM Network", "dvpg-prod"} <= nets for nets in seen.values()), seen
    assert [name for name, nets in seen.items() if "Backup LAN" in nets] == ["esx03.lab.local"]
    nics = {n.network.name if hasattr(n.backing, "network") and n.backing.network else None
            for n in find_vm(si, "win01").config.hardware.device
            if isinstance(n, vim.vm.device.VirtualEthernetCard)}
    assert len(nics) == 1  # win01's e1000e is on the distributed port group
    esx01 = hosts["esx01.lab.local"]
    dc = esx01.parent
    while not isinstance(dc, vim.Datacenter):
        dc = dc.parent
    before = {vm.name for vm in dc.vmFolder.childEntity}
    nic = vim.vm.device.VirtualVmxnet3(
        key=-1, backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(
            deviceName="Backup LAN"))
    spec = vim.vm.ConfigSpec(
        name="nic-on-no-network", guestId="otherGuest64",
        files=vim.vm.FileInfo(vmPathName="[datastore1]"),
        deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", device=nic)])
    with pytest.raises(vim.fault.InvalidDeviceSpec) as refused:
        WaitForTask(dc.vmFolder.CreateVM_Task(spec, esx01.parent.resourcePool, esx01))
    assert "Invalid configuration for device" in refused.value.msg
    uplinks = next(n for n in esx01.network if n.name == "dvs-prod-DVUplinks")
    assert uplinks.config.uplink  # as vCenter marks a switch's uplink port group
    nic.backing = vim.vm.device.VirtualEthernetCard.DistributedVirtualPortBackingInfo(
        port=vim.dvs.PortConnection(portgroupKey=uplinks.key,
                                    switchUuid=uplinks.config.distributedVirtualSwitch.uuid))
    with pytest.raises(vim.fault.InvalidDeviceSpec):  # no VM joins an uplink port group
        WaitForTask(dc.vmFolder.CreateVM_Task(spec, esx01.parent.resourcePool, esx01))
    assert {vm.name for vm in dc.vmFolder.childEntity} == before


def test_macs_follow_vcenters_rules(esx_lab, si):
    """A new VM asking for an assigned MAC another VM has gets a fresh one in vCenter's range
    (00:50:56:80–BF); a static MAC with VMware's OUI above 00:50:56:3F:FF:FF is refused at power-on
    ("not in the valid range", vSphere 5.1+); a valid static one is kept and powers on."""
    from pyVim.task import WaitForTask

    esx01 = next(h for h in si.content.viewManager.CreateContainerView(
        si.content.rootFolder, [vim.HostSystem], True).view if h.name == "esx01.lab.local")
    dc = esx01.parent
    while not isinstance(dc, vim.Datacenter):
        dc = dc.parent
    [taken] = [c.macAddress for c in find_vm(si, "linux01").config.hardware.device
               if isinstance(c, vim.vm.device.VirtualEthernetCard)]
    assert taken.startswith("00:50:56:") and 0x80 <= int(taken[9:11], 16) <= 0xBF

    def create(name: str, kind: str, mac: str) -> vim.VirtualMachine:
        nic = vim.vm.device.VirtualVmxnet3(
            key=-1, addressType=kind, macAddress=mac,
            backing=vim.vm.device.VirtualEthernetCard.NetworkBackingInfo(deviceName="VM Network"))
        spec = vim.vm.ConfigSpec(
            name=name, guestId="otherGuest64", files=vim.vm.FileInfo(vmPathName="[datastore1]"),
            deviceChange=[vim.vm.device.VirtualDeviceSpec(operation="add", device=nic)])
        WaitForTask(dc.vmFolder.CreateVM_Task(spec, esx01.parent.resourcePool, esx01))
        return find_vm(si, name)

    made = []
    try:
        dup = create("mac-dup", "assigned", taken)
        made.append(dup)
        [got] = [c for c in dup.config.hardware.device
                 if isinstance(c, vim.vm.device.VirtualEthernetCard)]
        assert got.addressType == "assigned" and got.macAddress != taken
        assert 0x80 <= int(got.macAddress[9:11], 16) <= 0xBF
        bad = create("mac-static-bad", "manual", "00:50:56:9a:00:01")
        made.append(bad)
        with pytest.raises(vmodl.fault.InvalidArgument) as refused:
            WaitForTask(bad.PowerOnVM_Task())
        assert "not in the valid range" in refused.value.msg
        good = create("mac-static-ok", "manual", "00:50:56:3f:00:01")
        made.append(good)
        WaitForTask(good.PowerOnVM_Task())
        assert good.runtime.powerState == "poweredOn"
    finally:
        for vm in made:
            if vm.runtime.powerState == "poweredOn":
                WaitForTask(vm.PowerOffVM_Task())
            WaitForTask(vm.Destroy_Task())
