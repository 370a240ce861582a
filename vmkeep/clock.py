"""The one source of the current time, so tests can move it.

Retention, grace periods, lock staleness and licence expiry all ask :func:`now`.  The only way to
move it is in-process: :func:`frozen` (tests), or ``tests/support/run_cli.py`` for a CLI run in a
subprocess of the test suite.  No environment variable moves it: in an installed vmkeep, an
expired licence stays expired and prune's grace period and lock staleness follow the real clock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime

_override: datetime | None = None


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    if _override is not None:
        return _override
    return datetime.now(UTC)


@contextlib.contextmanager
def frozen(at: datetime) -> Iterator[None]:
    """Make :func:`now` return ``at`` inside the block."""
    global _override
    previous, _override = _override, at if at.tzinfo else at.replace(tzinfo=UTC)
    try:
        yield
    finally:
        _override = previous
