"""Block exports of a restore point's disks over NBD, served by nbdkit.

:class:`NbdExport` starts ``nbdkit`` with vmkeep's Python plugin (``nbdkit_plugin.py`` here)
serving disk ``N`` — or one volume of it — of an image or VM restore point, read-only, on a Unix
socket or a TCP address (loopback by default).  With ``writable=True`` nbdkit's ``cow`` filter
keeps every write in a temporary overlay that disappears with the export: the repository is
never written.  Readers (``qemu-img``, ``nbdcopy``, ``nbdinfo``, ``nbdfuse``, QEMU) see the same
bytes a restore would write; reads fetch only the chunks they touch.

Contract:

- :meth:`NbdExport.start` returns once nbdkit accepts connections — told by the pid file nbdkit
  writes once it listens, never by connecting (a connection could reach another server on that
  address) — (it opens the repository and the point first, so a wrong point or password, an
  address it cannot listen on, fail *here*, as :class:`ExportFailed` with nbdkit's own one-line
  reason); :meth:`stop` ends it (SIGTERM, then SIGKILL after a bounded wait) and removes its
  socket; the class is a context manager.  A ``socket_path`` where something other than a
  socket exists is refused before nbdkit starts.
- The repository password reaches nbdkit through the environment it inherits (never argv); a
  password this process got from ``VMKEEP_PASSWORD_COMMAND`` is handed over through a pipe
  instead, so the command is not run (and the user not asked) once more per export.
- :func:`open_source` is what the plugin serves: ``pread(offset, length)``, ``extents(offset,
  count)`` (all-zero chunks reported as holes that read as zeros), ``size``, and ``parallel``
  (whether reads may run concurrently).

nbdkit (Debian ``nbdkit`` + ``nbdkit-plugin-python``) must be installed; :func:`require_nbdkit`
says so clearly otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import site
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, cast

from vmkeep.browse.errors import BrowseError
from vmkeep.storage.codec import ZERO_ID

PLUGIN = Path(__file__).with_name("nbdkit_plugin.py")
#: how long nbdkit may take to open the repository and start listening
START_TIMEOUT = 120.0
EXTENT_DATA, EXTENT_HOLE_ZERO = 0, 3


class ExportFailed(BrowseError):
    """The NBD export could not be started: {}"""

    exit_code = 1


class ExportStopped(BrowseError):
    """The NBD export stopped by itself: {}"""

    exit_code = 1


def require_nbdkit() -> str:
    """``nbdkit`` with its Python plugin, or :class:`ExportFailed` naming the packages."""
    exe = shutil.which("nbdkit")
    if exe is None or not _has_python_plugin(exe):
        raise ExportFailed(
            "nbdkit with its Python plugin is needed (Debian: apt-get install nbdkit "
            "nbdkit-plugin-python)"
        )
    return exe


def _has_python_plugin(exe: str) -> bool:
    return _python_plugin(exe) is not None


def _python_plugin(exe: str) -> Path | None:
    out = subprocess.run([exe, "--dump-config"], capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("plugindir="):
            plugin = Path(line.partition("=")[2]) / "nbdkit-python-plugin.so"
            return plugin if plugin.exists() else None
    return None


def embedded_python_home() -> str:
    """The prefix of the Python that nbdkit's plugin embeds, for ``PYTHONHOME``.

    An embedded interpreter finds its standard library by searching ``PATH`` for ``python3``;
    where another Python comes first (pyenv, a venv's ``bin``) it would load that one's
    compiled modules into the wrong ``libpython``.  The embedded Python must also be the same
    minor version as this one, since vmkeep's compiled dependencies are shared with it.
    """
    plugin = _python_plugin(require_nbdkit())
    assert plugin is not None
    ldd = subprocess.run(["ldd", str(plugin)], capture_output=True, text=True, check=False)
    version = None
    for line in ldd.stdout.splitlines():
        name = line.strip().split(" ", 1)[0]
        if name.startswith("libpython"):
            version = name.removeprefix("libpython").split(".so", 1)[0]
    mine = f"{sys.version_info.major}.{sys.version_info.minor}"
    if version is None or version != mine:
        raise ExportFailed(
            f"nbdkit's Python plugin embeds Python {version or '(unknown)'}, vmkeep runs on "
            f"Python {mine}; install vmkeep on the system's Python {version} to export over NBD"
        )
    for prefix in ("/usr", "/usr/local"):
        if Path(prefix, "lib", f"python{version}", "os.py").exists():
            return prefix
    raise ExportFailed(f"the standard library of nbdkit's Python {version} was not found")


def site_paths() -> list[str]:
    """Where this interpreter finds vmkeep and its dependencies (handed to nbdkit's Python)."""
    paths = [str(Path(__file__).resolve().parents[2])]
    paths += [p for p in site.getsitepackages() if os.path.isdir(p)]
    return paths


@dataclass
class NbdExport:
    """One running nbdkit export (see the module docstring)."""

    repo: str
    point: str
    disk: int = 0
    volume: str | None = None
    socket_path: str | None = None
    listen: tuple[str, int] | None = None
    writable: bool = False
    env: dict[str, str] | None = None
    stats_file: str | None = None  # the plugin writes {"chunks_fetched", "bytes_fetched"} at exit
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)
    _tmp: str | None = field(default=None, init=False)
    _listened: bool = field(default=False, init=False)  # its socket is ours to remove

    @property
    def pid_file(self) -> str:
        assert self._tmp is not None
        return os.path.join(self._tmp, "nbdkit.pid")

    @property
    def uri(self) -> str:
        """An NBD URI clients understand (``nbd+unix:///?socket=…`` or ``nbd://host:port``)."""
        if self.listen is not None:
            host, port = self.listen
            return f"nbd://{host}:{port}"
        return f"nbd+unix:///?socket={self.socket_path}"

    def command(self) -> list[str]:
        cmd = [require_nbdkit(), "--foreground", "--exit-with-parent", "--pidfile", self.pid_file]
        if self.listen is not None:
            host, port = self.listen
            cmd += ["--ipaddr", host, "--port", str(port)]
        else:
            cmd += ["--unix", str(self.socket_path)]
        if self.writable:
            cmd += ["--filter=cow"]
        else:
            cmd += ["--readonly"]
        cmd += ["python", str(PLUGIN), f"repo={self.repo}", f"point={self.point}"]
        cmd += [f"disk={self.disk}", f"sitepath={':'.join(site_paths())}"]
        if self.volume:
            cmd.append(f"volume={self.volume}")
        if self.stats_file:
            cmd.append(f"statsfile={self.stats_file}")
        return cmd

    def start(self) -> NbdExport:
        return self.spawn().wait_ready()

    def spawn(self) -> NbdExport:
        """Start nbdkit without waiting (several exports can open the repository side by side);
        :meth:`wait_ready` then waits as :meth:`start` does."""
        if self.socket_path is not None and self.listen is None:
            _clear_socket_path(self.socket_path)
        self._tmp = tempfile.mkdtemp(prefix="vmkeep-nbd-")  # the pid file; the default socket
        if self.listen is None and self.socket_path is None:
            self.socket_path = os.path.join(self._tmp, "nbd.sock")
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
        env["PYTHONHOME"] = embedded_python_home()
        env.pop("PYTHONPATH", None)
        from vmkeep.storage.crypto import hand_over_password

        handed = hand_over_password(env)
        try:
            self.proc = subprocess.Popen(
                self.command(), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                pass_fds=handed,
            )
        finally:
            for fd in handed:
                os.close(fd)
        self._errors: list[bytes] = []
        self._reader = threading.Thread(target=_drain, args=(self.proc, self._errors), daemon=True)
        self._reader.start()
        return self

    def wait_ready(self) -> NbdExport:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        while not self._accepting():
            if self.proc.poll() is not None:
                self._reader.join(5)
                self._cleanup()
                raise ExportFailed(_reason(b"".join(self._errors)))
            if time.monotonic() > deadline:
                self.stop()
                raise ExportFailed(f"nbdkit did not listen within {START_TIMEOUT:.0f} s")
            time.sleep(0.05)
        self._listened = True
        return self

    def _accepting(self) -> bool:
        """nbdkit wrote its pid file: it listens (``--pidfile``'s contract)."""
        try:
            with open(self.pid_file, encoding="ascii") as f:
                return f.read().strip() == str(self.proc.pid if self.proc else "")
        except OSError:
            return False

    def wait(self) -> int:
        """Block until nbdkit ends (Ctrl-C reaches it through the process group); its exit
        status.  :meth:`failure` says why when that is not 0."""
        assert self.proc is not None
        try:
            return self.proc.wait()
        finally:
            self._cleanup()

    def failure(self) -> str:
        """Why nbdkit ended: its last error line, or the signal or status it ended with."""
        assert self.proc is not None
        self._reader.join(5)
        code = self.proc.returncode
        said = _reason(b"".join(self._errors)) if self._errors else ""
        if code is not None and code < 0:
            ended = f"nbdkit was killed by {signal.Signals(-code).name}"
        else:
            ended = f"nbdkit exited with status {code}"
        return f"{ended}: {said}" if said else ended

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._cleanup()

    def _cleanup(self) -> None:
        if self._listened and self.proc is not None and self.proc.poll() is not None \
                and self.listen is None and self.socket_path:
            self._listened = False
            with contextlib.suppress(OSError):  # nbdkit leaves its socket behind
                if stat.S_ISSOCK(os.lstat(self.socket_path).st_mode):
                    os.unlink(self.socket_path)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> NbdExport:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _clear_socket_path(path: str) -> None:
    """Make ``path`` free for nbdkit's socket: a socket nobody listens on (left by an export
    that was killed) is removed; :class:`ExportFailed` when something other than a socket is
    there (a file given by mistake) or ``path`` is empty.  A socket a server listens on stays:
    nbdkit then says the address is in use."""
    if not path:
        raise ExportFailed("the socket path is empty")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ExportFailed(f"{path}: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise ExportFailed(f"{path} exists and is not a socket: choose another --socket")
    with socket.socket(socket.AF_UNIX) as probe:
        try:
            probe.connect(path)
        except ConnectionRefusedError:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        except OSError:
            pass


def _drain(proc: subprocess.Popen[bytes], sink: list[bytes]) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        if len(sink) < 200:
            sink.append(line)


def _reason(stderr: bytes) -> str:
    """nbdkit's last meaningful error line (Python tracebacks from the plugin reduced to their
    final line)."""
    lines = [ln.strip() for ln in stderr.decode(errors="replace").splitlines() if ln.strip()]
    for line in reversed(lines):
        if "error" in line.lower() or "vmkeep" in line.lower():
            return line.split("error: ", 1)[-1] if "error: " in line else line
    return lines[-1] if lines else "nbdkit exited"


# -- what the plugin serves ------------------------------------------------------------------------


@dataclass
class ExportSource:
    """Bytes of one disk or volume, with zero extents (see the module docstring)."""

    size: int
    parallel: bool
    _pread: Any
    _chunks: Any = None  # the disk's ChunkTable, when the source is the disk or a plain range
    _base: int = 0
    caches: list[Any] = field(default_factory=list)  # the readers' chunk caches (statistics)

    def stats(self) -> dict[str, int]:
        return {
            "chunks_fetched": sum(c.fetches for c in self.caches),
            "bytes_fetched": sum(c.bytes_fetched for c in self.caches),
        }

    def pread(self, offset: int, length: int) -> bytes:
        return cast(bytes, self._pread(offset, length))

    def extents(self, offset: int, count: int) -> Iterator[tuple[int, int, int]]:
        end = min(self.size, offset + count)
        if self._chunks is None or offset >= end:
            yield (offset, max(0, end - offset), EXTENT_DATA)
            return
        from bisect import bisect_right

        table = self._chunks
        i = bisect_right(table.offsets, offset + self._base) - 1
        pos = offset
        while pos < end and i < len(table):
            chunk_end = table.offsets[i] + table.lengths[i] - self._base
            kind = EXTENT_HOLE_ZERO if table.blob_id(i) == ZERO_ID else EXTENT_DATA
            stop = min(end, chunk_end)
            yield (pos, stop - pos, kind)
            pos, i = stop, i + 1


def open_source(repo_url: str, point_ref: str, disk: int, volume: str | None) -> ExportSource:
    """Open what an export serves: disk ``disk`` of ``point_ref``, or its volume ``volume``."""
    from vmkeep.browse.point import PointImage
    from vmkeep.storage.crypto import password_from_env
    from vmkeep.storage.repository import Repository

    repo = Repository.open(repo_url, password=password_from_env)
    img = PointImage.open(repo, point_ref)
    reader = img.reader(disk)
    if volume is None:
        return ExportSource(reader.size, True, reader.pread, reader.table, caches=[reader.cache])
    info = img.volume(volume)
    if info.offset is not None:
        base, vreader = info.offset, img.reader(info.disk)

        def ranged(offset: int, length: int) -> bytes:
            length = max(0, min(length, info.size - offset))
            return vreader.pread(base + offset, length)

        return ExportSource(info.size, True, ranged, vreader.table, base, [vreader.cache])
    stream = cast(BinaryIO, img.open_volume_stream(info.name))

    def streamed(offset: int, length: int) -> bytes:
        stream.seek(offset)
        return stream.read(max(0, min(length, info.size - offset)))

    caches = [img.reader(n).cache for n in img.disk_numbers]
    return ExportSource(info.size, False, streamed, caches=caches)
