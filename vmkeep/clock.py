"""The one source of the current time, so tests can move it.

Retention, grace periods, lock staleness and licence expiry all ask :func:`now`; tests use
:func:`frozen` (or set ``VMKEEP_FAKE_NOW`` to an ISO timestamp for subprocesses).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime

_override: datetime | None = None


def now() -> datetime:
    """The current time, timezone-aware UTC."""
    if _override is not None:
        return _override
    fake = os.environ.get("VMKEEP_FAKE_NOW")
    if fake:
        parsed = datetime.fromisoformat(fake)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
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
