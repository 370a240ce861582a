"""A small TCP proxy for network-fault tests: forwards 127.0.0.1:port to an upstream port and,
on request, resets or stalls connections after some bytes of upload (client → server)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from dataclasses import dataclass


@dataclass
class Fault:
    kind: str  # "reset" | "stall"
    after: int  # bytes of upload before the fault
    seconds: float = 0.0


class FaultProxy:
    """``with FaultProxy(upstream) as proxy:`` then ``proxy.arm(Fault("reset", 200_000))``:
    the next connection that uploads that many bytes is cut (RST) or stalled."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.faults: list[Fault] = []
        self.fired = 0
        self._lock = threading.Lock()
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pipe, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upload: bool) -> None:
        sent = 0
        fault: Fault | None = None
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upload and fault is None:
                    with self._lock:
                        if self.faults:
                            fault = self.faults[0]
                if upload and fault is not None and sent + len(data) >= fault.after:
                    with self._lock:
                        if fault in self.faults:
                            self.faults.remove(fault)
                            self.fired += 1
                        else:
                            fault = None
                    if fault is not None:
                        if fault.kind == "stall":
                            time.sleep(fault.seconds)
                        self._reset(src, dst)
                        return
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            self._shut(src, dst)

    @staticmethod
    def _shut(*socks: socket.socket) -> None:
        """Both directions of a proxied connection end (errors of a gone peer ignored)."""
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    @staticmethod
    def _reset(*socks: socket.socket) -> None:
        for s in socks:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._stop = True
        self.sock.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
