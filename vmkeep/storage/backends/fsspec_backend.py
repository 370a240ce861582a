"""Any fsspec file system as a backend (``memory://``, ``sftp://``, ``smb://``, ``s3://`` …).

Atomicity: object stores (``s3``, ``gcs``, ``az``, ``memory``) publish an object only when its
single PUT completes, so ``put`` writes the final key directly.  File-system protocols (SFTP, SMB,
WebDAV …) get a temporary name in the same folder and a rename — we deliberately do not use
fsspec transactions, whose ``close()`` publishes partially written files after an exception.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import socket
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import fsspec

from vmkeep.errors import network_reason
from vmkeep.settings import settings
from vmkeep.storage.backend import TEMP_MARKER, Backend
from vmkeep.storage.errors import (
    ObjectNotFound,
    StorageError,
    TargetFull,
    TargetPermissionDenied,
    TargetUnreachable,
)
from vmkeep.storage.rate_limit import paced_slices

#: Protocols whose clients must not be shared between threads: one connection per thread.
PER_THREAD_PROTOCOLS = frozenset({"sftp", "ssh", "smb"})
#: Protocols whose single PUT is atomic (no temporary name needed).
ATOMIC_PUT_PROTOCOLS = frozenset({"memory", "s3", "s3a", "gs", "gcs", "az", "abfs", "adl"})


#: SMB NTSTATUS codes of a full share and of refused access (smbprotocol raises ``SMBOSError``
#: with ``errno`` 0 for them, or a bare ``SMBResponseException`` carrying ``status``).  Not
#: ``SMBAuthenticationError``: smbclient raises it when it reconnects a dropped connection by
#: itself, without the credentials — transient, the retry's ``reconnect()`` supplies them.
SMB_FULL = frozenset({0xC000007F, 0xC0000044})  # DISK_FULL, QUOTA_EXCEEDED
SMB_DENIED = frozenset(
    {0xC0000022, 0xC0000061, 0xC000006A, 0xC000006D, 0xC000006E, 0xC0000071, 0xC0000072}
)  # ACCESS_DENIED, PRIVILEGE_NOT_HELD, WRONG_PASSWORD, LOGON_FAILURE, ACCOUNT_RESTRICTION,
#    PASSWORD_EXPIRED, ACCOUNT_DISABLED


def _not_found(exc: BaseException) -> bool:
    """``FileNotFoundError`` or an ``OSError`` subclass carrying ENOENT (smbprotocol's
    ``SMBOSError`` is a plain ``OSError`` subclass, never a ``FileNotFoundError``)."""
    return isinstance(exc, OSError) and (
        isinstance(exc, FileNotFoundError) or exc.errno == errno.ENOENT
    )


def _translate(exc: BaseException, key: str) -> StorageError:
    if _not_found(exc):
        return ObjectNotFound(key)
    if type(exc).__module__.startswith("smbprotocol"):
        status = getattr(exc, "ntstatus", None) or getattr(exc, "status", None)
        if status in SMB_FULL:
            return TargetFull(key, str(exc))
        if status in SMB_DENIED:
            return TargetPermissionDenied(f"{key}: {exc}")
    if isinstance(exc, PermissionError):
        return TargetPermissionDenied(f"{key}: {exc}")
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return TargetFull(key, str(exc))
    return TargetUnreachable(key, network_reason(exc) or f"{type(exc).__name__}: {exc}")


def _range_past_the_end(exc: BaseException) -> bool:
    """S3's answer to a range that starts past the object's end (HTTP 416 ``InvalidRange``,
    which s3fs raises as ``OSError(EINVAL)``): permanent, not a target to retry."""
    return (isinstance(exc, OSError) and exc.errno == errno.EINVAL
            and "range is not satisfiable" in str(exc))


def safe_location(url: str) -> str:
    """``url`` without the user name and password it may carry (never echoed)."""
    parts = urlsplit(url)
    if not parts.netloc or "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def stall_timeout() -> float:
    """Seconds a network target may stay silent mid-transfer before the attempt fails and is
    retried (``VMKEEP_TARGET_TIMEOUT``, default 120; S3 uses botocore's own read timeout)."""
    return settings().target_timeout


def _mtime(info: dict[str, Any]) -> float | None:
    """The modification time in an fsspec ``info`` dict (keys differ between protocols)."""
    for name in ("mtime", "LastModified", "last_modified", "created", "time"):
        value = info.get(name)
        if value is None:
            continue
        if isinstance(value, datetime):
            return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()
        if isinstance(value, int | float):
            return float(value)
        with contextlib.suppress(ValueError):
            parsed = datetime.fromisoformat(str(value))
            return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
    return None


class FsspecBackend(Backend):
    """Objects as files of an fsspec file system rooted at the URL's path."""

    def __init__(self, url: str, storage_options: dict[str, Any]) -> None:
        self._url = url
        self._options = storage_options
        self._local = threading.local()
        try:
            fs, root = fsspec.core.url_to_fs(url, **storage_options)
        except Exception as exc:
            raise _translate(exc, safe_location(url)) from exc
        self._shared_fs = fs
        self.root = root.rstrip("/")
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        self.protocol = protocol
        self.atomic_put = protocol in ATOMIC_PUT_PROTOCOLS
        # Never echo credentials: keep only protocol and path.
        self.location = f"{protocol}://{self.root}"
        if protocol == "smb":
            self._check_share(fs)

    def _check_share(self, fs: Any) -> None:
        """Fail at once on a share the server does not have: smbclient's ``makedirs`` (every
        ``put``) loops forever on it, since the parent of ``\\\\host\\share`` is itself."""
        share = "/" + self.root.strip("/").split("/")[0]
        try:
            fs.info(share)
        except Exception as exc:
            if _not_found(exc):
                raise TargetUnreachable(
                    f"smb://{fs.host}{share}", "the server has no such share"
                ) from exc
            raise _translate(exc, self.location) from exc

    @property
    def fs(self) -> Any:
        """The file system for this thread: one connection per thread for protocols whose
        clients are not thread-safe (paramiko's SFTP client deadlocks when shared)."""
        if self.protocol not in PER_THREAD_PROTOCOLS:
            return self._shared_fs
        fs = getattr(self._local, "fs", None)
        if fs is None:
            fs = self._local.fs = self._connect()
        return fs

    def _connect(self) -> Any:
        options = {**self._options, "skip_instance_cache": True}
        if self.protocol == "smb":
            # smbprotocol reads its receive timeout (after which it sends an echo, and gives up
            # when that goes unanswered too) from the environment when a connection is made
            os.environ.setdefault(
                "SMB_EXPERIMENTAL_TRANSPORT_RECEIVE_TIMEOUT", str(int(stall_timeout() / 2) or 1)
            )
        try:
            fs, _ = fsspec.core.url_to_fs(self._url, **options)
        except Exception as exc:
            raise _translate(exc, safe_location(self._url)) from exc
        if self.protocol in ("sftp", "ssh"):
            # Nagle + delayed ACKs held back pipelined SFTP requests (a 256 KiB read: ~30 ms
            # → ~10 ms on loopback)
            with contextlib.suppress(Exception):
                sock = fs.client.get_transport().sock
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # a server that stops answering mid-transfer (no reset) must not hang the backup:
            # every channel read and window wait times out, and the retry wrapper reconnects
            with contextlib.suppress(Exception):
                fs.ftp.get_channel().settimeout(stall_timeout())
        return fs

    def free_space(self) -> tuple[int, int] | None:
        """SMB: the share's volume size and what this user may still write (``stat_volume``);
        other protocols cannot tell (``None``).  A failed query is ``None``, never an error."""
        if self.protocol != "smb":
            return None
        try:
            import smbclient

            total, caller_free, _actual = smbclient.stat_volume(
                self._unc(self.root), port=self.fs.port or 445)
        except Exception:
            return None
        return int(total), int(caller_free)

    def reconnect(self) -> None:
        """Drop this thread's (possibly broken) connection and open a new one; retries call
        this."""
        fs = self._connect()
        if self.protocol in PER_THREAD_PROTOCOLS:
            self._local.fs = fs
        else:
            self._shared_fs = fs

    def _path(self, key: str) -> str:
        if key.startswith("/") or ".." in key.split("/"):
            raise ValueError(f"invalid object key {key!r}")
        return f"{self.root}/{key}"

    def put(self, key: str, data: bytes | memoryview) -> None:
        self._put(key, data, None)

    def put_paced(self, key: str, data: bytes | memoryview, pace: Callable[[int], None]) -> None:
        """``put`` under a bandwidth limit: SFTP and SMB write the temporary object slice by
        slice, ``pace`` before each; object stores publish an object in one request, so the
        whole object is booked first (see :meth:`Backend.put_paced`)."""
        if self.atomic_put:
            super().put_paced(key, data, pace)
        else:
            self._put(key, data, pace)

    def _put(self, key: str, data: bytes | memoryview, pace: Callable[[int], None] | None) -> None:
        path = self._path(key)
        payload = bytes(data)
        try:
            if self.atomic_put:
                self.fs.pipe_file(path, payload)
                return
            directory = path.rsplit("/", 1)[0]
            tmp = f"{directory}/{TEMP_MARKER}{secrets.token_hex(8)}"
            self.fs.makedirs(directory, exist_ok=True)
            try:
                if self.protocol in ("sftp", "ssh"):
                    self._sftp_write(tmp, payload, pace)
                elif pace is not None:
                    self._paced_write(tmp, payload, pace)
                else:
                    self.fs.pipe_file(tmp, payload)
                if self.protocol == "smb":
                    self._smb_replace(tmp, path)
                elif not (self.protocol in ("sftp", "ssh") and self._sftp_replace(tmp, path)):
                    if self.fs.exists(path):
                        self.fs.rm_file(path)
                    self.fs.mv(tmp, path)
            except BaseException:
                with contextlib.suppress(Exception):
                    self.fs.rm_file(tmp)
                raise
        except StorageError:
            raise
        except Exception as exc:
            raise _translate(exc, key) from exc

    def _sftp_write(self, path: str, payload: bytes, pace: Callable[[int], None] | None) -> None:
        """Pipelined SFTP writes: paramiko otherwise waits for the server's reply to every 32 KiB
        request (0.5 MiB/s on loopback; ~25 MiB/s pipelined).  A failed request still raises,
        at the latest when the file is closed.  With ``pace``: one slice at a time."""
        with self.fs.ftp.open(path, "wb") as f:
            f.set_pipelined(True)
            if pace is None:
                f.write(payload)
                return
            for piece in paced_slices([payload], pace):
                f.write(piece)

    def _paced_write(self, path: str, payload: bytes, pace: Callable[[int], None]) -> None:
        """Write a temporary object slice by slice through fsspec's file API (SMB …)."""
        with self.fs.open(path, "wb") as f:
            for piece in paced_slices([payload], pace):
                f.write(piece)

    def _sftp_replace(self, tmp: str, path: str) -> bool:
        """Rename ``tmp`` over ``path`` in one step with OpenSSH's ``posix-rename@openssh.com``
        (plain SFTP v3 rename refuses an existing target, and remove-then-rename leaves a moment
        without the object — a lock being refreshed, for instance).  ``False`` when the server
        lacks the extension: the caller falls back to remove-then-rename."""
        try:
            self.fs.ftp.posix_rename(tmp, path)
        except OSError as exc:
            if "unsupported" in str(exc).lower() or "not supported" in str(exc).lower():
                return False
            raise
        return True

    def _sftp_read(self, path: str, offset: int, length: int | None) -> bytes:
        """All 32 KiB read requests of the range sent at once (``prefetch``), not one by one."""
        with self.fs.ftp.open(path, "rb") as f:
            size = f.stat().st_size
            end = size if length is None else min(size, offset + length)
            if end <= offset:
                return b""
            f.seek(offset)
            f.prefetch(end)
            return bytes(f.read(end - offset))

    def _smb_replace(self, src: str, dst: str) -> None:
        """Rename ``src`` over ``dst`` in one step (fsspec's ``mv`` refuses an existing ``dst``,
        and removing it first would leave a moment without the object)."""
        import smbclient

        smbclient.replace(self._unc(src), self._unc(dst), port=self.fs.port or 445)

    def _unc(self, path: str) -> str:
        """``/share/dir`` as the UNC path ``\\\\host\\share\\dir`` (SMB)."""
        return "\\\\" + self.fs.host + path.replace("/", "\\")

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        path = self._path(key)
        # fsspec's SMB opens files exclusively by default: parallel reads of one pack would fail
        # with a sharing violation (and wait out retries).  Objects are immutable: share them.
        share: dict[str, str] = {"share_access": "rd"} if self.protocol == "smb" else {}
        try:
            if self.protocol in ("sftp", "ssh"):
                return self._sftp_read(path, offset, length)
            if offset == 0 and length is None:
                return bytes(self.fs.cat_file(path, **share))
            end = None if length is None else offset + length
            return bytes(self.fs.cat_file(path, start=offset, end=end, **share))
        except Exception as exc:
            if offset > 0 and _range_past_the_end(exc):
                return b""  # as a file read past its end: the caller finds the object short
            raise _translate(exc, key) from exc

    def size(self, key: str) -> int:
        try:
            return int(self.fs.size(self._path(key)))
        except Exception as exc:
            raise _translate(exc, key) from exc

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        for key, size, _mtime in self.list_times(prefix):
            yield key, size

    def list_times(self, prefix: str) -> Iterator[tuple[str, int, float | None]]:
        return self._listing(self._path(prefix), prefix, temporary=False)

    def list_temporary(self, prefix: str) -> Iterator[tuple[str, int, float | None]]:
        """Files named with :data:`TEMP_MARKER` under ``prefix`` (``""``: the whole root).  Object
        stores never write temporary names: nothing to list (and no full listing to pay for)."""
        if self.atomic_put:
            return iter(())
        base = self._path(prefix) if prefix else self.root
        return self._listing(base, prefix, temporary=True)

    def _listing(
        self, base: str, prefix: str, temporary: bool
    ) -> Iterator[tuple[str, int, float | None]]:
        """(key, size, mtime) of the files below ``base``: the temporary ones or all others."""
        try:
            found = self._find(base)
        except Exception as exc:
            if _not_found(exc):
                return
            raise _translate(exc, prefix) from exc
        strip = len(self.root) + 1
        for path, info in found.items():
            path = path.lstrip("/") if not self.root.startswith("/") else path
            name = path.rsplit("/", 1)[-1]
            if name.startswith(TEMP_MARKER) != temporary or info.get("type") == "directory":
                continue
            rel = path[strip:] if path.startswith(self.root) else path
            yield rel.lstrip("/"), int(info.get("size") or 0), _mtime(info)

    def _find(self, base: str) -> dict[str, dict[str, Any]]:
        """Every file below ``base`` with its info.  Object stores list a prefix in one go; file
        systems are walked here because fsspec's ``find`` silently leaves out a sub-directory
        whose listing fails (its ``walk`` does not pass ``on_error`` down), so a listing cut
        short by a dropped connection would look complete — and prune trusts listings."""
        if self.atomic_put:
            return dict(self.fs.find(base, detail=True))
        found: dict[str, dict[str, Any]] = {}
        pending = [base]
        while pending:
            directory = pending.pop()
            try:
                entries = self.fs.ls(directory, detail=True)
            except Exception as exc:
                if directory != base and _not_found(exc):
                    continue  # removed since its parent was listed
                raise
            for info in entries:
                name = info["name"].rstrip("/")
                if info.get("type") == "directory":
                    if name != directory:
                        pending.append(name)
                else:
                    found[name] = info
        return found

    def delete(self, key: str) -> None:
        try:
            self.fs.rm_file(self._path(key))
        except Exception as exc:
            if _not_found(exc):
                return
            raise _translate(exc, key) from exc
