"""The installation's licence usage ledger: format, merge, and check-and-record as one step."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from vmkeep import clock
from vmkeep.licensing.gate import authorize, client_item
from vmkeep.licensing.ledger import FORMAT, KEEP, Ledger, LedgerError

NOW = datetime(2026, 6, 1, tzinfo=UTC)


def test_records_once_per_identity_newest_time_and_forgets_the_very_old(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "licence" / "usage.json")
    old = NOW - KEEP - timedelta(days=1)
    ledger.transact(lambda _: (None, [client_item("ancient", old), client_item("a", NOW)]))
    ledger.transact(lambda _: (None, [client_item("A", NOW + timedelta(days=1))]))
    items = ledger.read()
    assert [(i.identity, i.time) for i in items] == [("name:a", NOW + timedelta(days=1))]
    doc = json.loads(ledger.path.read_text())
    assert doc["format"] == FORMAT and doc["version"] == 1


def test_a_damaged_ledger_is_an_error_not_an_empty_one(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "usage.json")
    ledger.path.write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(LedgerError, match="damaged"):
        ledger.read()


def test_parallel_checks_cannot_all_take_the_last_workload() -> None:
    """Nine workloads counted; four backups of new machines check at once: exactly one gets the
    tenth (community tier), because check and record are one step under the ledger's lock."""
    with clock.frozen(NOW):
        Ledger().transact(lambda _: (None, [client_item(f"c{i}", NOW) for i in range(9)]))
        barrier = threading.Barrier(4)
        allowed: list[bool] = []

        def one(i: int) -> None:
            barrier.wait()
            allowed.append(authorize([client_item(f"new{i}", NOW)], now=NOW).allowed)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert sorted(allowed) == [False, False, False, True]
    assert len(Ledger().read()) == 10
