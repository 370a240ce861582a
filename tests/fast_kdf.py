"""Test-only fast key derivation: lower scrypt's cost in-process, never through the environment.

vmkeep itself has no switch that weakens keys (``VMKEEP_SCRYPT_N`` is gone: ``init --encrypt``
always writes n = 2^15).  Tests that create many encrypted repositories lower
:data:`vmkeep.storage.crypto.SCRYPT_N` in their own process with the :func:`fast_kdf` fixture,
and CLI subprocesses run through the suite's one test-only launcher,
``python -m tests.support.run_cli ARGS``, which lowers it too before running ``vmkeep``.  This
module lives in the source tree's ``tests/`` package, which the wheel does not ship
(``[tool.setuptools.packages.find]`` includes ``vmkeep*`` only), so a normal install cannot
reach it; reading keys needs no hook at all (any n up to the production value opens).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

#: n used by tests: ≈ 1 ms per derivation instead of ≈ 0.1 s.
TEST_SCRYPT_N = 1024
#: The source tree's root (``python -m tests.…`` launchers must run from here or on PYTHONPATH).
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Lower scrypt's n for key files this test writes in-process; yields the value."""
    from vmkeep.storage import crypto

    monkeypatch.setattr(crypto, "SCRYPT_N", TEST_SCRYPT_N)
    yield TEST_SCRYPT_N
