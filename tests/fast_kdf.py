"""Test-only fast key derivation: lower scrypt's cost in-process, never through the environment.

vmkeep itself has no switch that weakens keys (``VMKEEP_SCRYPT_N`` is gone: ``init --encrypt``
always writes n = 2^15).  Tests that create many encrypted repositories lower
:data:`vmkeep.storage.crypto.SCRYPT_N` in their own process with the :func:`fast_kdf` fixture,
and tests of the CLI run it through this module (``python -m tests.fast_kdf ARGS``), which patches
the constant and then runs the ordinary ``vmkeep`` entry point.  This module lives in the source
tree's ``tests/`` package, which the wheel does not ship (``[tool.setuptools.packages.find]``
includes ``vmkeep*`` only), so a normal install cannot reach it; reading keys needs no hook at all
(any n up to the production value opens).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

#: n used by tests: ≈ 1 ms per derivation instead of ≈ 0.1 s.
TEST_SCRYPT_N = 1024
#: The source tree's root (``python -m tests.fast_kdf`` must run from here).
ROOT = Path(__file__).resolve().parents[1]
#: argv prefix running the vmkeep CLI with the fast KDF.
VMKEEP_FAST_KDF = [sys.executable, "-m", "tests.fast_kdf"]


@pytest.fixture
def fast_kdf(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Lower scrypt's n for key files this test writes in-process; yields the value."""
    from vmkeep.storage import crypto

    monkeypatch.setattr(crypto, "SCRYPT_N", TEST_SCRYPT_N)
    yield TEST_SCRYPT_N


def main() -> None:
    """``python -m tests.fast_kdf ARGS``: the vmkeep CLI with :data:`TEST_SCRYPT_N`."""
    from vmkeep.storage import crypto

    crypto.SCRYPT_N = TEST_SCRYPT_N
    from vmkeep.cli.main import main as vmkeep_main

    sys.argv[0] = "vmkeep"
    vmkeep_main()


if __name__ == "__main__":
    main()
