"""Client of the lab's admin API (``/vmkeep-lab/…`` on the lab's HTTPS port, basic auth with the
lab's credentials, TLS verified against the lab's certificate). Used by the CLI and the pytest
fixture to change guests and switch faults; see ``esxsim/admin.go`` and ``esxsim/faults.go``.

Fault kinds: ``snapshot_create``, ``quiesce_fail``, ``quiesce_timeout`` (``delay`` seconds),
``remove_snapshot``, ``remove_slow`` (``delay`` seconds: a removal that takes that long, the
VM's other snapshot operations meanwhile failing with TaskInProgress), ``soap_fault`` (target =
SOAP method), ``ds_slow`` (``delay`` seconds per MiB), ``ds_short`` / ``ds_drop`` (after
``bytes``), ``guest_program`` (target = program path substring, ``exit_code``), ``guest_auth``,
``session_expire`` (immediate), ``host_disconnect`` (target = host name; cleared by
:meth:`LabClient.clear_faults`), ``cbt_lie`` (alias ``cbt-lie``: ``QueryChangedDiskAreas`` with
a real changeId omits every other changed area, a lone area altogether — a CBT bug like ESXi
6.0's). ``target`` narrows a rule to a VM name (or method/path/host); ``count`` is how many
times it fires (0 = until cleared).
"""

from __future__ import annotations

import base64
import contextlib
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from vmkeep.lab.errors import LabError
from vmkeep.lab.faults import FAULT_KINDS

EXPORT_CHUNK = 8 << 20  # bytes per admin read of export_disk


class LabClient:
    def __init__(self, base_url: str, user: str, password: str, cafile: str) -> None:
        self.base = base_url.rstrip("/")
        self._auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        self._ctx = ssl.create_default_context(cafile=cafile)

    def request(
        self,
        method: str,
        op: str,
        params: dict[str, Any] | None = None,
        body: bytes | None = None,
        raw: bool = False,
        timeout: float = 120,
    ) -> Any:
        url = f"{self.base}/vmkeep-lab/{op}"
        if params:
            url += "?" + urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        req = urllib.request.Request(
            url, data=body, method=method, headers={"Authorization": self._auth}
        )
        try:
            with urllib.request.urlopen(req, context=self._ctx, timeout=timeout) as resp:
                data = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            with contextlib.suppress(ValueError):
                detail = json.loads(detail).get("error", detail)
            raise LabError(f"{op}: {detail}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise LabError(f"admin API unreachable: {exc}") from None
        return data if raw else json.loads(data or b"null")

    # --- inventory and state
    def status(self) -> dict[str, Any]:
        return self.request("GET", "status")

    # --- faults
    def add_fault(
        self,
        kind: str,
        target: str | None = None,
        count: int = 1,
        delay: float = 0,
        nbytes: int = 0,
        exit_code: int = 0,
        message: str = "",
        **alias: int,
    ) -> dict[str, Any]:
        """Add a rule; ``bytes=`` is accepted as an alias of ``nbytes=``."""
        if set(alias) - {"bytes"}:
            raise TypeError(f"unexpected fault parameters: {sorted(set(alias) - {'bytes'})}")
        nbytes = alias.get("bytes", nbytes)
        kind = kind.replace("-", "_")
        if kind not in FAULT_KINDS:
            raise LabError(f"unknown fault kind {kind!r} (one of {', '.join(FAULT_KINDS)})")
        rule = {
            "kind": kind,
            "target": target or "",
            "count": count,
            "delay": delay,
            "bytes": nbytes,
            "exit_code": exit_code,
            "message": message,
        }
        return self.request("POST", "faults", body=json.dumps(rule).encode())

    def faults(self) -> list[dict[str, Any]]:
        return self.request("GET", "faults")

    def clear_faults(self, kind: str | None = None) -> None:
        self.request("DELETE", "faults", {"kind": kind})

    def expire_sessions(self) -> None:
        self.request("POST", "sessions/expire")

    def disconnect_host(self, host: str) -> None:
        self.request("POST", "hosts/disconnect", {"host": host})

    def connect_host(self, host: str) -> None:
        self.request("POST", "hosts/connect", {"host": host})

    def nfc_leases(self) -> list[dict[str, Any]]:
        """Every NFC export lease the lab handed out: state, outcome, progress calls, bytes."""
        return self.request("GET", "nfc/leases")

    def set_qcda_page(self, n: int) -> None:
        self.request("POST", "qcda-page", {"n": n})

    # --- guests
    def write(
        self,
        vm: str,
        percent: float = 0,
        disk: int = 0,
        seed: int = 0,
        at: tuple[int, int] | None = None,
        trim: bool = False,
    ) -> list[tuple[int, int]]:
        """Random guest writes to ~percent % of the disk; returns the (offset, length) extents.
        ``at=(offset, length)``: one write of random bytes exactly there instead.
        ``trim``: the guest discards (UNMAP) those extents instead of writing them; they read
        zeros after (on a VMFS6 datastore's SEsparse delta whole grains become "unmapped").

        Block-level like a real workload's I/O, but blind to the guest file system: it may damage
        it. Use :meth:`put_file` for file-level changes on a VM you also read files from.
        """
        params: dict[str, Any] = {"vm": vm, "disk": disk, "percent": percent, "seed": seed}
        if trim:
            params["trim"] = 1
        if at is not None:
            params.update(offset=at[0], length=at[1])
        res = self.request("POST", "write", params)
        return [(int(a), int(b)) for a, b in res["extents"] or []]

    def put_file(self, vm: str, guest_path: str, data: bytes, overwrite: bool = True) -> None:
        self.request(
            "POST",
            "put-file",
            {"vm": vm, "path": guest_path, "overwrite": int(overwrite)},
            body=data,
        )

    def get_file(self, vm: str, guest_path: str) -> bytes:
        return self.request("GET", "get-file", {"vm": vm, "path": guest_path}, raw=True)

    def read_disk(
        self,
        vm: str,
        disk: int = 0,
        snapshot: str | None = None,
        offset: int = 0,
        length: int | None = None,
    ) -> bytes:
        """The disk's bytes now, or as of ``snapshot`` (moref value or name)."""
        return self.request(
            "GET",
            "read",
            {"vm": vm, "disk": disk, "snapshot": snapshot, "offset": offset, "length": length},
            raw=True,
        )

    def export_disk(self, vm: str, disk: int, to: Path, snapshot: str | None = None) -> int:
        """Write the lab's own view of disk ``disk`` of ``vm`` (now, or as of ``snapshot``:
        moref value or name) to the file ``to``, sparse (all-zero chunks are holes); returns the
        disk's size in bytes.  The lab reads its own chain (flat base + COWD/SEsparse deltas):
        an independent reference for backups, restores and qemu-img."""
        size = self._disk_capacity(vm, disk)
        with open(to, "wb") as out:
            offset = 0
            while offset < size:
                n = min(EXPORT_CHUNK, size - offset)
                data = self.read_disk(vm, disk, snapshot, offset, n)
                if len(data) != n:
                    raise LabError(f"export of {vm} disk {disk}: short read at byte {offset}")
                if data.count(0) != n:
                    out.seek(offset)
                    out.write(data)
                offset += n
            out.truncate(size)
        return size

    def _disk_capacity(self, vm: str, disk: int) -> int:
        for v in self.status()["vms"]:
            if v["name"] == vm:
                chains = v.get("chains") or []
                if not 0 <= disk < len(chains):
                    raise LabError(f"{vm} has no disk {disk} (it has {len(chains)})")
                return int(chains[disk]["capacity"])
        raise LabError(f"no such VM: {vm}")

    def guest_log(self, vm: str) -> dict[str, Any]:
        """``{"processes": [...], "quiesce": [...]}`` recorded for the guest."""
        return self.request("GET", "guest", {"vm": vm})
