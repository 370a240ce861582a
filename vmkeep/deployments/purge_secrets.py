"""Find, and delete, Prefect flow runs whose parameters hold a secret (left by older vmkeep).

Before the fix of issue #24, ``vmkeep backup files`` with ``VMKEEP_SOURCE_PASSWORD`` and a Prefect
API stored ``source_options = {"password": …}`` as a flow-run parameter; a hand-written
deployment may have done the same with ``storage_options``.  This tool lists every flow run of
the server in ``PREFECT_API_URL`` whose parameters contain an option named like a secret
(:func:`vmkeep.storage.secret_options.secret_keys`; values are never printed), and with
``--delete`` deletes those runs (with their task runs, logs and states).

Deleted rows can stay in the database's free pages and write-ahead log: afterwards stop the
server and compact the database (SQLite: ``sqlite3 prefect.db 'PRAGMA wal_checkpoint(TRUNCATE);
VACUUM;'``; PostgreSQL: ``VACUUM FULL flow_run;``), and rotate the password — database backups
taken meanwhile still hold it (docs/security.md, "Secrets and Prefect").

Usage: ``python -m vmkeep.deployments.purge_secrets [--delete]``; prints one JSON line per run
(``id``, ``flow``, ``name``, ``start``, ``keys``) and exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from vmkeep.storage.secret_options import secret_keys

PAGE = 200


async def find_runs() -> list[dict[str, Any]]:
    """Flow runs whose parameters hold a secret-named option: ``id, flow, name, start, keys``."""
    from prefect.client.orchestration import get_client

    found: list[dict[str, Any]] = []
    async with get_client() as client:
        flows = {f.id: f.name for f in await client.read_flows()}
        offset = 0
        while True:
            runs = await client.read_flow_runs(limit=PAGE, offset=offset)
            for run in runs:
                keys = secret_keys(run.parameters)
                if keys:
                    found.append({
                        "id": str(run.id),
                        "flow": flows.get(run.flow_id, "?"),
                        "name": run.name,
                        "start": run.start_time.isoformat() if run.start_time else None,
                        "keys": keys,
                    })
            if len(runs) < PAGE:
                return found
            offset += PAGE


async def delete_runs(ids: list[str]) -> None:
    from uuid import UUID

    from prefect.client.orchestration import get_client

    async with get_client() as client:
        for run_id in ids:
            await client.delete_flow_run(UUID(run_id))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vmkeep.deployments.purge_secrets")
    parser.add_argument("--delete", action="store_true", help="delete the runs found")
    args = parser.parse_args(argv)
    runs = asyncio.run(find_runs())
    for run in runs:
        print(json.dumps({**run, "deleted": bool(args.delete)}))
    if args.delete and runs:
        asyncio.run(delete_runs([r["id"] for r in runs]))


if __name__ == "__main__":
    main()
