"""``python -m tests.support.run_engine``: Prefect's flow-run engine (``python -m prefect.engine``)
with the development licence key trusted — the command the deployment tests give their work pools,
so flow runs started by real Prefect workers can use ``tests/licensing/keys/dev_licence.json``.
Test-only, like :mod:`tests.support.run_cli`: an installed vmkeep has no such entry point.
"""

from __future__ import annotations

import runpy

from tests.support.licence import trust_dev_key

if __name__ == "__main__":
    trust_dev_key()
    runpy.run_module("prefect.engine", run_name="__main__", alter_sys=True)
