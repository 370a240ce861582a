"""Fixtures for the vSphere library tests (helpers live in ``vsphere_helpers``).

* ``tls_cert``: a self-signed certificate for 127.0.0.1 (PEM paths and SHA-256 thumbprint);
* ``range_server``: a local HTTPS datastore-like file server with Range and fault switches;
* ``lab``: the ESX lab (``esx_lab``), skipped when the lab plugin does not provide it.
"""

from __future__ import annotations

import http.server
import ssl
import threading
from typing import Any

import pytest

from tests.vsphere.vsphere_helpers import Cert, RangeServer, _handler, make_cert


@pytest.fixture(scope="session")
def tls_cert(tmp_path_factory: pytest.TempPathFactory) -> Cert:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def range_server(tls_cert: Cert) -> Any:
    state = RangeServer(port=0)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls_cert.cert, tls_cert.key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    server.daemon_threads = True
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def lab(request: pytest.FixtureRequest) -> Any:
    """The ESX lab, or skip when it is not available on this machine."""
    try:
        return request.getfixturevalue("esx_lab")
    except pytest.FixtureLookupError:
        pytest.skip("ESX lab fixture (esx_lab) not available")
