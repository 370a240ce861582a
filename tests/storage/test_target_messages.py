"""A network target that cannot be reached says why in a user's words, and names the target
without any credential (pure: no server is started; the address refuses or does not resolve)."""

from __future__ import annotations

import socket

import pytest

from vmkeep.storage.backend import open_backend
from vmkeep.storage.backends.fsspec_backend import safe_location
from vmkeep.storage.errors import TargetUnreachable


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_refused_connection_says_so() -> None:
    port = _closed_port()
    with pytest.raises(TargetUnreachable) as exc:
        open_backend(f"sftp://127.0.0.1:{port}/repo", {"timeout": 5}).list("index")
    said = exc.value.get_message()
    assert f"(sftp://127.0.0.1:{port}/repo)" in said and said.endswith("connection refused")


def test_an_unknown_host_says_so() -> None:
    with pytest.raises(TargetUnreachable, match="cannot resolve the host name"):
        open_backend("sftp://bob@nohost.invalid/repo", {"timeout": 5}).list("index")


def test_credentials_are_never_part_of_the_location() -> None:
    assert safe_location("sftp://bob:pw@host:22/r") == "sftp://host:22/r"
    assert safe_location("smb://DOM;bob@host/share/r") == "smb://host/share/r"
    assert safe_location("/srv/repo") == "/srv/repo"
