"""The suite's Hypothesis profile (loaded by ``tests/conftest.py``): derandomized — the same
examples on every run, so CI passes or fails for the code, not for the draw — with no deadline
and without the health checks that measure the machine's speed or the size of a draw.  A test's
own ``suppress_health_check`` replaces the profile's list: name :data:`SUPPRESSED` in it."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

SUPPRESSED = (HealthCheck.too_slow, HealthCheck.data_too_large)

settings.register_profile(
    "vmkeep", derandomize=True, deadline=None, suppress_health_check=list(SUPPRESSED)
)
settings.load_profile("vmkeep")
