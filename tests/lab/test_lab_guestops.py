"""Guest operations without Docker: programs (pre-freeze/post-thaw scripts) and file transfers."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest
from pyVmomi import vim

from tests.lab.lab_helpers import find_vm, guest_transfer_url

pytestmark = pytest.mark.lab


def creds(user: str = "root") -> vim.vm.guest.NamePasswordAuthentication:
    return vim.vm.guest.NamePasswordAuthentication(username=user, password="secret")


def finished(pm: Any, vm: Any, pid: int) -> Any:
    """The guest process once it has ended (polled: how long the simulator takes is no
    assertion; the deadline only stops a hang)."""
    deadline = time.monotonic() + 300
    while True:
        [proc] = pm.ListProcessesInGuest(vm, creds(), [pid])
        if proc.endTime is not None or time.monotonic() > deadline:
            return proc
        time.sleep(0.05)


def test_start_program_and_list_processes(esx_lab, si):
    vm = find_vm(si, "linux01")
    pm = si.content.guestOperationsManager.processManager
    spec = vim.vm.guest.ProcessManager.ProgramSpec(
        programPath="/usr/local/sbin/pre-freeze.sh", arguments="--db"
    )
    pid = pm.StartProgramInGuest(vm, creds(), spec)
    proc = finished(pm, vm, pid)
    assert proc.exitCode == 0 and proc.endTime is not None and "--db" in proc.cmdLine
    log = esx_lab.client.guest_log("linux01")["processes"]
    assert log[-1]["path"] == "/usr/local/sbin/pre-freeze.sh" and log[-1]["args"] == "--db"


def test_program_failure_is_switchable(esx_lab, si):
    vm = find_vm(si, "linux01")
    pm = si.content.guestOperationsManager.processManager
    with esx_lab.fault("guest_program", "post-thaw", exit_code=3):
        spec = vim.vm.guest.ProcessManager.ProgramSpec(programPath="/usr/local/sbin/post-thaw.sh")
        pid = pm.StartProgramInGuest(vm, creds(), spec)
        assert finished(pm, vm, pid).exitCode == 3


def test_guest_ops_need_running_vm(si):
    vm = find_vm(si, "tmpl-linux")
    pm = si.content.guestOperationsManager.processManager
    with pytest.raises(vim.fault.InvalidPowerState):
        pm.StartProgramInGuest(
            vm, creds(), vim.vm.guest.ProcessManager.ProgramSpec(programPath="/bin/true")
        )


def _put(esx_lab, si, vm_name: str, url: str, data: bytes) -> None:
    """PUT to the host running the VM ("*" in the URL), verified with the host's certificate."""
    url, ctx = guest_transfer_url(esx_lab, si, vm_name, url)
    req = urllib.request.Request(url, data=data, method="PUT")
    with urllib.request.urlopen(req, context=ctx) as resp:
        assert resp.status == 200


def _get(esx_lab, si, vm_name: str, url: str) -> bytes:
    url, ctx = guest_transfer_url(esx_lab, si, vm_name, url)
    with urllib.request.urlopen(url, context=ctx) as resp:
        return resp.read()


@pytest.mark.parametrize(
    ("vm_name", "path"),
    [
        ("linux01", "/home/alice/restored/hello.txt"),
        ("win01", "C:\\restored.txt"),
        ("win01", "D:\\DATA\\restored.txt"),
    ],
)
def test_file_transfer_to_and_from_guest(esx_lab, si, vm_name, path):
    vm = find_vm(si, vm_name)
    fm = si.content.guestOperationsManager.fileManager
    data = f"restored into {vm_name}\n".encode() * 100
    url = fm.InitiateFileTransferToGuest(
        vm, creds(), path, vim.vm.guest.FileManager.FileAttributes(), len(data), True
    )
    _put(esx_lab, si, vm_name, url, data)
    info = fm.InitiateFileTransferFromGuest(vm, creds(), path)
    assert info.size == len(data)
    assert _get(esx_lab, si, vm_name, info.url) == data
    assert esx_lab.client.get_file(vm_name, path) == data


def test_put_file_lands_in_ext4_and_is_tracked(esx_lab, si):
    esx_lab.put_file("small05", "/etc/motd", b"welcome to small05\n")
    assert esx_lab.client.get_file("small05", "/etc/motd") == b"welcome to small05\n"
    fm = si.content.guestOperationsManager.fileManager
    info = fm.InitiateFileTransferFromGuest(find_vm(si, "small05"), creds(), "/etc/motd")
    assert _get(esx_lab, si, "small05", info.url) == b"welcome to small05\n"


def test_file_from_guest_missing(si):
    fm = si.content.guestOperationsManager.fileManager
    with pytest.raises(vim.fault.FileNotFound):
        fm.InitiateFileTransferFromGuest(find_vm(si, "linux01"), creds(), "/no/such/file")


def test_temp_file_mkdir_and_delete(esx_lab, si):
    vm = find_vm(si, "small06")
    fm = si.content.guestOperationsManager.fileManager
    tmp = fm.CreateTemporaryFileInGuest(vm, creds(), "vmkeep-", ".sh", None)
    assert tmp.startswith("/tmp/vmkeep-") and tmp.endswith(".sh")
    assert esx_lab.client.get_file("small06", tmp) == b""
    fm.MakeDirectoryInGuest(vm, creds(), "/srv/restore/a/b", True)
    esx_lab.put_file("small06", "/srv/restore/a/b/f.txt", b"x")
    fm.DeleteFileInGuest(vm, creds(), tmp)
    with pytest.raises(vim.fault.FileNotFound):
        fm.DeleteFileInGuest(vm, creds(), tmp)
    assert esx_lab.client.get_file("small06", "/srv/restore/a/b/f.txt") == b"x"
