"""``vmkeep doctor`` and its parts: the role (one list, printed as JSON), the transport rule, the
host endpoint probe against real TLS servers on loopback, and the whole check on the ESX lab as
the administrator (exit 0) and as the restricted user (exit 1, naming the missing privileges)."""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.run_cli import VMKEEP, cli_env
from tests.vsphere.vsphere_helpers import Cert, make_cert
from vmkeep.lab.access import RESTRICTED_LACKS, RESTRICTED_USER
from vmkeep.vsphere.doctor import probe_host
from vmkeep.vsphere.privileges import ROLE, role_document
from vmkeep.vsphere.transport_choice import choose


def _doctor(*args: str, password: str | None = None, tmp: Path | None = None) -> Any:
    extra = []
    if password is not None and tmp is not None:
        pw = tmp / "pw"
        pw.write_text(password)
        os.chmod(pw, 0o600)
        extra = ["--password-file", str(pw)]
    env = cli_env(PREFECT_API_URL="", COLUMNS="200")
    return subprocess.run([*VMKEEP, "doctor", *args, *extra], capture_output=True, text=True,
                          env=env)


def test_print_role_is_the_one_list_in_code() -> None:
    out = _doctor("--print-role")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc == role_document()
    assert doc["privileges"] == sorted(ROLE)
    assert set(RESTRICTED_LACKS) <= set(doc["privileges"])
    assert {"VirtualMachine.State.CreateSnapshot", "Global.DisableMethods"} <= set(ROLE)


def test_doctor_without_vcenter_is_a_usage_error() -> None:
    out = _doctor()
    assert out.returncode == 2 and "--vcenter" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("kind", "mover", "want"),
    [("VMFS", False, "https"), ("NFS", False, "https"), ("NFS41", False, "https"),
     ("vsan", False, "nfc"), ("VVOL", False, "nfc"), ("vvol", False, "nfc"),
     ("PMEM", False, "https"),
     ("vsan", True, "hotadd"), ("VMFS", True, "hotadd")],
)
def test_transport_rule(kind: str, mover: bool, want: str) -> None:
    choice = choose("auto", kind, hotadd="the mover's host mounts it" if mover else None)
    assert choice.transport == want and choice.reason


# -- the host probe against real TLS servers ----------------------------------------------------

@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, Cert]]:
    cert = make_cert(tmp_path, "host")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert, cert.key)
    sock = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True):
                    pass
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield sock.getsockname()[1], cert
    stop.set()
    thread.join()
    sock.close()


def test_probe_accepts_the_published_certificate_only(tls_server: tuple[int, Cert],
                                                      tmp_path: Path) -> None:
    port, cert = tls_server
    pem = Path(cert.cert).read_text()
    assert probe_host("127.0.0.1", port, pem, 10) is None
    other = Path(make_cert(tmp_path, "other").cert).read_text()
    why = probe_host("127.0.0.1", port, other, 10)
    assert why and "not the certificate the host publishes" in why
    closed = socket.create_server(("127.0.0.1", 0))
    free = closed.getsockname()[1]
    closed.close()
    why = probe_host("127.0.0.1", free, pem, 10)
    assert why and "unreachable" in why


# -- on the lab ---------------------------------------------------------------------------------

@pytest.mark.lab
def test_doctor_on_the_lab_as_administrator(lab: Any, tmp_path: Path) -> None:
    out = _doctor("--vcenter", lab.url, "--user", lab.user, "--cafile", lab.cafile, "--json",
                  password=lab.password, tmp=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    doc = json.loads(out.stdout)
    assert doc["ok"] and not doc["problems"] and doc["privileges"]["missing"] == []
    assert doc["user"] == lab.user
    ds = {d["name"]: d for d in doc["datastores"]}
    for d in lab.datastores:
        assert ds[d["name"]]["transport"] == choose("auto", ds[d["name"]]["type"]).transport
    assert ds["nfs01"]["type"] == "NFS" and ds["nfs01"]["transport"] == "https"
    assert {h["name"] for h in doc["hosts"]} == {h["name"] for h in lab.hosts}
    for h in doc["hosts"]:  # endpoints the lab publishes are probed; others only warn
        assert h["level"] in ("ok", "warning"), h
    vms = {v["name"]: v for v in doc["vms"]}
    assert set(vms) >= {v["name"] for v in lab.vms}
    assert vms["old01"]["cbt"] == "unsupported" and vms["old01"]["hw_version"] == "vmx-04"
    assert vms["old01"]["level"] == "warning"
    assert vms["small05"]["hw_version"] == "vmx-13" and vms["small05"]["cbt"] in ("on", "off")
    assert any("independent" in f["reason"] for f in vms["db01"]["findings"])
    assert vms["tmpl-linux"]["template"]
    table = _doctor("--vcenter", lab.url, "--user", lab.user, "--cafile", lab.cafile,
                    password=lab.password, tmp=tmp_path)
    assert table.returncode == 0 and "no problems found" in table.stdout
    assert "old01" in table.stdout and "Privileges" in table.stdout


@pytest.mark.lab
def test_doctor_names_the_restricted_users_missing_privileges(lab: Any, tmp_path: Path) -> None:
    u = next(u for u in lab.info.users if u["name"] == RESTRICTED_USER)
    out = _doctor("--vcenter", lab.url, "--user", u["name"], "--cafile", lab.cafile, "--json",
                  password=u["password"], tmp=tmp_path)
    assert out.returncode == 1, out.stderr
    doc = json.loads(out.stdout)
    assert not doc["ok"]
    missing = {m["privilege"]: m for m in doc["privileges"]["missing"]}
    assert set(missing) == set(RESTRICTED_LACKS)
    assert all(e.startswith("Datastore:") for e in missing["Datastore.Browse"]["entities"])
    vm_entities = missing["VirtualMachine.Provisioning.DiskRandomRead"]["entities"]
    assert {e.partition(":")[2] for e in vm_entities} >= {
        v["moref"] for v in lab.vms if not v["template"]}
    for priv in RESTRICTED_LACKS:
        assert any(priv in p for p in doc["problems"])
    table = _doctor("--vcenter", lab.url, "--user", u["name"], "--cafile", lab.cafile,
                    password=u["password"], tmp=tmp_path)
    assert table.returncode == 1
    assert all(p in table.stdout for p in RESTRICTED_LACKS)
    assert u["password"] not in table.stdout + table.stderr


@pytest.mark.lab
def test_doctor_in_a_mover_vm_picks_hotadd(lab: Any, tmp_path: Path) -> None:
    out = _doctor("--vcenter", lab.url, "--user", lab.user, "--cafile", lab.cafile, "--json",
                  "--mover", "small05", password=lab.password, tmp=tmp_path)
    doc = json.loads(out.stdout)
    assert doc["mover"] == "small05"
    # The mover's host sees every shared datastore; a host-local one of another host is not
    # hot-addable from there.
    mover_host = next(v["host"] for v in lab.vms if v["name"] == "small05")
    from vmkeep.lab.inventory import DATASTORE_HOSTS

    local = {name for name, hosts in DATASTORE_HOSTS.items() if mover_host not in hosts}
    assert local == {"esx03-local"}
    for d in doc["datastores"]:
        assert (d["transport"] == "hotadd") == (d["name"] not in local), d
    out = _doctor("--vcenter", lab.url, "--user", lab.user, "--cafile", lab.cafile, "--json",
                  "--mover", "no-such-vm", password=lab.password, tmp=tmp_path)
    assert out.returncode == 1
    assert any("no-such-vm" in p for p in json.loads(out.stdout)["problems"])


# -- VMs that cannot be backed up (pure classification of pyVmomi objects) -----------------------

def _disk(key: int, backing: Any) -> Any:
    from pyVmomi import vim

    return vim.vm.device.VirtualDisk(key=key, backing=backing,
                                     deviceInfo=vim.Description(label=f"Hard disk {key}"))


def _flat(mode: str = "persistent") -> Any:
    from pyVmomi import vim

    return vim.vm.device.VirtualDisk.FlatVer2BackingInfo(fileName="[ds1] vm/vm.vmdk",
                                                         diskMode=mode)


def _vm_props(**kw: Any) -> dict[str, Any]:
    props = {"name": "vm", "config.version": "vmx-19", "config.changeTrackingEnabled": True,
             "capability.changeTrackingSupported": True, "runtime.powerState": "poweredOn",
             "runtime.connectionState": "connected", "config.hardware.device": [_disk(1, _flat())]}
    props.update(kw)
    return props


def _classify(props: dict[str, Any], host_state: str = "connected",
              lacking: dict[str, list[str]] | None = None) -> dict[str, Any]:
    from pyVmomi import vim

    from vmkeep.vsphere.doctor import _check_vm

    host = vim.HostSystem("host-1")
    props.setdefault("runtime.host", host)
    ds = {"ds1": {"transport": "https"}}
    return _check_vm(vim.VirtualMachine("vm-1"), props, {"host-1": "esx01"},
                     {"host-1": host_state}, ds, lacking or {})


def test_vm_classification() -> None:
    from pyVmomi import vim

    ok = _classify(_vm_props())
    assert ok["level"] == "ok" and ok["cbt"] == "on" and ok["transports"] == ["https"]
    rdm = vim.vm.device.VirtualDisk.RawDiskMappingVer1BackingInfo(
        fileName="[ds1] vm/rdm.vmdk", compatibilityMode="physicalMode")
    skipped = _classify(_vm_props(**{  # skipped by backups, with a warning
        "config.hardware.device": [_disk(1, _flat()), _disk(2, rdm)]}))
    assert skipped["level"] == "warning", skipped
    assert skipped["findings"][0]["reason"] == "physical-mode RDM(s) skipped (in no snapshot): " \
        "Hard disk 2", skipped
    cases = {
        "every disk is independent or a physical-mode RDM": _classify(_vm_props(**{
            "config.hardware.device": [_disk(1, _flat("independent_persistent")),
                                       _disk(2, rdm)]})),
        "every disk is independent": _classify(_vm_props(**{
            "config.hardware.device": [_disk(1, _flat("independent_persistent"))]})),
        "VM is orphaned": _classify(_vm_props(**{"runtime.connectionState": "orphaned"})),
        "is disconnected": _classify(_vm_props(), host_state="disconnected"),
        "cannot snapshot it": _classify(_vm_props(), lacking={
            "vm-1": ["VirtualMachine.State.CreateSnapshot"]}),
    }
    for want, got in cases.items():
        assert got["level"] == "problem", (want, got)
        assert any(want in f["reason"] for f in got["findings"]), (want, got)
    old = _classify(_vm_props(**{"capability.changeTrackingSupported": False,
                                 "config.version": "vmx-04"}))
    assert old["level"] == "warning" and old["cbt"] == "unsupported"
    empty = _classify(_vm_props(**{"config.hardware.device": []}))
    assert empty["level"] == "ok" and "no virtual disks" in empty["findings"][0]["reason"]


@pytest.mark.lab
def test_doctor_reports_datastores_low_on_space(lab: Any, tmp_path: Path) -> None:
    """Below the skip threshold a datastore is a problem (VM backups there are skipped), below
    the warning threshold a warning; the lab's datastores report what ``ds_full`` sets."""
    capacity = 500 << 30
    args = ("--vcenter", lab.url, "--user", lab.user, "--cafile", lab.cafile, "--json")
    with lab.fault("ds_full", "datastore2", count=0, bytes=capacity * 3 // 100):
        low = _doctor(*args, password=lab.password, tmp=tmp_path)
    with lab.fault("ds_full", "datastore2", count=0, bytes=capacity * 8 // 100):
        warned = _doctor(*args, password=lab.password, tmp=tmp_path)
    assert low.returncode == 1, low.stderr
    doc = json.loads(low.stdout)
    assert {d["name"]: d for d in doc["datastores"]}["datastore2"]["free_percent"] == 3.0
    [problem] = [p for p in doc["problems"] if "datastore2" in p]
    assert "3.0 % free" in problem and "skipped" in problem
    assert warned.returncode == 0, warned.stdout
    doc = json.loads(warned.stdout)
    assert any("datastore2: 8.0 % free" in w for w in doc["warnings"])
    assert {d["name"]: d for d in doc["datastores"]}["datastore1"]["free_percent"] == 80.0
