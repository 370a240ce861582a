"""Runs last: the lab served the whole suite without a single server-side panic."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.lab


def test_no_panics_in_server_log(esx_lab):
    log = (esx_lab.state_dir / "esxsim.log").read_text(errors="replace")
    assert "panic" not in log, log[-3000:]
