"""How a CLI verb runs a job: build its spec from the options, then run it in-process (a
:class:`~vmkeep.runtime.local.LocalRuntime`) or as its Prefect flow — with ``--prefect``, or when
Prefect's settings name an API (:func:`vmkeep.orchestration.choose`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def run_job(
    job: Callable[..., Any],
    spec_type: Any,
    orchestrate: bool | None,
    bar: str | None = None,
    **params: Any,
) -> Any:
    """``job`` on ``spec_type(**params)``; a refused value is a usage error naming its option
    (:func:`~vmkeep.cli.spec_options.spec_from_options`, exit 2) before anything runs.
    ``bar``: draw a byte progress bar with this label on a terminal (in-process runs only)."""
    from vmkeep.cli.common import byte_progress
    from vmkeep.cli.spec_options import spec_from_options
    from vmkeep.flows.run import run
    from vmkeep.orchestration import choose

    spec = spec_from_options(spec_type, params)
    orchestrated = choose(orchestrate)
    with byte_progress(bar or "", None, bool(bar) and not orchestrated) as advance:
        return run(job, spec, orchestrated, None if orchestrated or not bar else advance)
