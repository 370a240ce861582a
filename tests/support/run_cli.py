"""``python -m tests.support.run_cli ARGS``: ``vmkeep ARGS`` as the test suite runs it.

The only way a CLI subprocess of the tests trusts the development licence key or runs at another
time: this module (which exists in the source tree's ``tests/`` package only, never in an
installed vmkeep) patches both in-process, then calls :func:`vmkeep.cli.main.main`.

* The development key (``tests/licensing/keys/dev_public.pem``) replaces the built-in vendor
  key, so licences minted by ``tests/licensing/licensing_devkeys.py`` verify
  (``VMKEEP_LICENSE=tests/licensing/keys/dev_licence.json`` installs the generous one).
* scrypt's cost is lowered to :data:`tests.fast_kdf.TEST_SCRYPT_N` for key files the run writes
  (vmkeep itself has no switch that weakens keys).
* ``VMKEEP_TEST_NOW=<ISO time>`` freezes :func:`vmkeep.clock.now` for the run (licence expiry,
  prune's grace period, lock staleness).  vmkeep itself never reads this variable.

Use :data:`VMKEEP` (argv prefix) and :func:`cli_env` (adds the source tree to ``PYTHONPATH``, so
the module is found whatever the subprocess's working directory).
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
VMKEEP = [sys.executable, "-m", "tests.support.run_cli"]
TEST_NOW = "VMKEEP_TEST_NOW"


def cli_env(base: dict[str, str] | None = None, **extra: str) -> dict[str, str]:
    """An environment for :data:`VMKEEP` subprocesses (``base`` defaults to ``os.environ``)."""
    env = dict(os.environ if base is None else base, **extra)
    paths = [str(ROOT), *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


def main() -> None:
    from tests.fast_kdf import TEST_SCRYPT_N
    from tests.support.licence import trust_dev_key
    from vmkeep import clock
    from vmkeep.storage import crypto

    trust_dev_key()
    crypto.SCRYPT_N = TEST_SCRYPT_N
    at = os.environ.get(TEST_NOW)
    sys.argv[0] = "vmkeep"
    from vmkeep.cli.main import main as vmkeep_main

    if not at:
        vmkeep_main(fast_exit=True)
        return
    parsed = datetime.fromisoformat(at)
    with clock.frozen(parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)):
        vmkeep_main(fast_exit=True)


if __name__ == "__main__":
    main()
