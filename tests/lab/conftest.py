"""Fixtures of the lab's own tests: a shared pyVmomi session on the ``esx_lab`` fixture."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from pyVim.connect import Disconnect


@pytest.fixture(scope="session")
def si(esx_lab) -> Iterator[Any]:
    si = esx_lab.connect()
    yield si
    with contextlib.suppress(Exception):
        Disconnect(si)
