"""What a test does when a program it needs is not installed.

On a developer's machine it is skipped; under CI (``CI`` set — ``.ci/run`` sets it, and so do CI
services) it fails, so a package missing from ``.ci/apt-packages`` cannot pass CI as skips.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def missing(message: str) -> NoReturn:
    """Skip (or, under CI, fail) the current test because a program is missing."""
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI: every package in .ci/apt-packages must be installed)")
    pytest.skip(message)
