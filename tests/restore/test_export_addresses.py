"""Where an NBD export listens: an address nbdkit cannot listen on fails the start (it said
"serving" and then ended with exit 0 — readiness was judged by connecting, which a file at the
socket path or another server on the port also satisfied); a file at the socket path is never
taken for a socket; a socket left by a killed export is replaced, one a live server listens on
is left to it; an export removes its own socket when it ends.  Real nbdkit and nbdinfo."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.restore.restore_helpers import VMKEEP, run_cli
from vmkeep.browse.nbd import ExportFailed, NbdExport

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("nbdkit", "nbdinfo")),
    reason="nbdkit / libnbd-bin missing (see .ci/apt-packages)",
)


def _size(uri: str) -> int:
    done = subprocess.run(["nbdinfo", "--size", uri], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return int(done.stdout)


def test_an_address_nbdkit_cannot_listen_on_fails_the_start(backed) -> None:  # type: ignore[no-untyped-def]
    export = NbdExport(str(backed.repo), backed.points["gpt"], 0, listen=("192.0.2.1", 10809))
    with pytest.raises(ExportFailed, match="Cannot assign requested address"):
        export.start()


def test_a_port_another_server_listens_on_fails_the_start(backed) -> None:  # type: ignore[no-untyped-def]
    """A connection to the port succeeds — to the other server: nbdkit's own word decides."""
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        export = NbdExport(str(backed.repo), backed.points["gpt"], 0, listen=("127.0.0.1", port))
        with pytest.raises(ExportFailed, match="Address already in use"):
            export.start()


def test_a_file_at_the_socket_path_is_refused_and_kept(backed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    file = tmp_path / "disk.img"
    file.write_bytes(b"precious")
    with pytest.raises(ExportFailed, match="exists and is not a socket"):
        NbdExport(str(backed.repo), backed.points["gpt"], 0, socket_path=str(file)).start()
    assert file.read_bytes() == b"precious"


def test_sockets_left_behind_live_ones_and_its_own(backed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    size = backed.images["gpt"].stat().st_size
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:  # bound, never listening: a killed server's
        dead.bind(str(stale))
    with NbdExport(str(backed.repo), backed.points["gpt"], 0, socket_path=str(stale)) as export:
        assert _size(export.uri) == size
        second = NbdExport(str(backed.repo), backed.points["gpt"], 0, socket_path=str(stale))
        with pytest.raises(ExportFailed, match="Address already in use"):
            second.start()
        assert _size(export.uri) == size  # the live export keeps its socket
    assert not stale.exists()  # removed by the export that made it


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--listen", "127.0.0.1:99999", "a port of 1 to 65535"),
    ("--listen", "127.0.0.1:0", "a port of 1 to 65535"),
    ("--socket", " ", "Invalid value for '--socket': an empty path"),
])
def test_an_unusable_address_is_a_usage_error(backed, option: str, value: str, says: str) -> None:  # type: ignore[no-untyped-def]
    code, _out, err = run_cli("export", "gpt@latest", "--nbd", option, value, repo=backed.repo)
    assert code == 2 and says in err, (code, err)


def test_an_export_whose_server_dies_fails_instead_of_ending_well(backed, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """nbdkit killed under a running ``vmkeep export``: exit 1 saying so (it printed "export
    stopped" and exited 0, as after Ctrl-C), and its socket is gone."""
    sock = tmp_path / "nbd.sock"
    env = dict(os.environ, PREFECT_API_URL="", VMKEEP_REPO=str(backed.repo))
    proc = subprocess.Popen([*VMKEEP, "export", "gpt@latest", "--nbd", "--json", "--socket",
                             str(sock)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line, proc.stderr.read() if proc.stderr else ""
        assert json.loads(line)["uri"].endswith(str(sock))
        server = subprocess.run(["pgrep", "-f", f"nbdkit .*--unix {sock}"], capture_output=True,
                                text=True).stdout.split()
        assert len(server) == 1, server
        os.kill(int(server[0]), signal.SIGKILL)
        _out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, err
    assert "The NBD export stopped by itself: nbdkit was killed by SIGKILL" in err
    assert not sock.exists()
