"""One vmkeep CLI run with its phases and every Prefect API request timed (issue 19).

    uv run --frozen python bench/trace_cli_run.py backup vm small01 --vcenter URL --cafile CA \
        --prefect --json > /dev/null            # TRACE_OUT=/tmp/trace.txt (the default)
    TRACE_PREFECT=0 uv run --frozen python bench/trace_cli_run.py … --no-prefect …   # direct

Writes a timeline (seconds since start, thread, ``[duration] what``): ``import prefect``, the
flow module's import, flow-run creation (``serialize_parameters``), each state change, each
step, artifact and slot call, every HTTP request to the Prefect API with its status, and the
exit hooks (``threading``'s — where Prefect drains its events and log workers — and
``atexit``'s).  Compare the process's wall time (``time``) with the last line for the
interpreter's own teardown.  A measuring aid: it patches Prefect and vmkeep at run time.
"""
import atexit
import functools
import os
import runpy
import sys
import threading
import time
from typing import Any

import httpx

T0 = time.monotonic()
LOG: list[tuple[float, str, str]] = []


def mark(what: str, t: float | None = None) -> None:
    now = time.monotonic() if t is None else t
    LOG.append((now - T0, threading.current_thread().name, what))


def flush() -> None:
    with open(os.environ.get("TRACE_OUT", "/tmp/trace.txt"), "w") as f:
        for t, thread, what in sorted(LOG):
            f.write(f"{t:7.3f} {thread[:22]:22} {what}\n")


def wrap(obj: Any, name: str, label: str | None = None, arg: Any = None) -> None:
    orig = getattr(obj, name)

    @functools.wraps(orig)
    def timed(*a: Any, **k: Any) -> Any:
        t = time.monotonic()
        lab = (label or name) + (f" {arg(a, k)}" if arg is not None else "")
        try:
            return orig(*a, **k)
        finally:
            mark(f"[{1000 * (time.monotonic() - t):6.0f} ms] {lab}", t)

    setattr(obj, name, timed)


def _api(request: Any, response: Any, t: float) -> None:
    took = 1000 * (time.monotonic() - t)
    mark(f"[{took:6.0f} ms] API {request.method} {request.url.path} -> {response.status_code}", t)


def _sync_send(orig: Any) -> Any:
    def send(self: Any, request: Any, *a: Any, **k: Any) -> Any:
        t = time.monotonic()
        response = orig(self, request, *a, **k)
        _api(request, response, t)
        return response

    return send


def _async_send(orig: Any) -> Any:
    async def send(self: Any, request: Any, *a: Any, **k: Any) -> Any:
        t = time.monotonic()
        response = await orig(self, request, *a, **k)
        _api(request, response, t)
        return response

    return send


def _exit_hooks() -> None:
    orig = threading._register_atexit  # type: ignore[attr-defined]

    def register(fn: Any, *a: Any, **k: Any) -> Any:
        name = getattr(fn, "__qualname__", repr(fn))

        def timed(*aa: Any, **kk: Any) -> Any:
            t = time.monotonic()
            try:
                return fn(*aa, **kk)
            finally:
                mark(f"[{1000 * (time.monotonic() - t):6.0f} ms] threading-atexit {name}", t)
                flush()

        return orig(timed, *a, **k)

    threading._register_atexit = register  # type: ignore[attr-defined]


def _patch_prefect() -> None:
    t = time.monotonic()
    import prefect

    mark(f"[{1000 * (time.monotonic() - t):6.0f} ms] import prefect", t)
    import prefect.flow_engine as fe
    import prefect.flows

    import vmkeep.flows.run as vr
    import vmkeep.runtime.prefect_runtime as pr
    import vmkeep.tasks.vcenter as tv

    def step_name(a: Any, k: Any) -> Any:
        return getattr(a[1], "__name__", a[1])

    wrap(prefect.flows.Flow, "__call__", "Flow.__call__ (the whole run)")
    wrap(prefect.flows.Flow, "serialize_parameters")
    wrap(fe.FlowRunEngine, "create_flow_run")
    wrap(fe.FlowRunEngine, "set_state", arg=lambda a, k: getattr(a[1], "type", ""))
    wrap(vr, "flow_of", "import the flow module (flow_of)")
    wrap(pr, "run_job_in_flow")
    wrap(pr.PrefectRuntime, "step", "step", arg=step_name)
    wrap(pr.PrefectRuntime, "publish_table")
    wrap(pr.PrefectRuntime, "publish_markdown")
    wrap(pr._PrefectSlots, "acquire")
    wrap(pr._PrefectSlots, "release")
    wrap(pr.PrefectRuntime, "close", "runtime close (slots back)")
    wrap(tv, "open_session")


def main() -> None:
    httpx.Client.send = _sync_send(httpx.Client.send)  # type: ignore[method-assign]
    httpx.AsyncClient.send = _async_send(httpx.AsyncClient.send)  # type: ignore[method-assign]
    _exit_hooks()
    atexit.register(lambda: (mark("atexit: the last hook"), flush()))
    if os.environ.get("TRACE_PREFECT", "1") == "1":
        _patch_prefect()
    else:
        import vmkeep.runtime.local as lr

        wrap(lr.LocalRuntime, "step", "step", arg=lambda a, k: getattr(a[1], "__name__", a[1]))
    atexit.register(lambda: (mark("atexit: the first hook"), flush()))
    sys.argv = ["vmkeep", *sys.argv[1:]]
    try:
        runpy.run_module("vmkeep.cli", run_name="__main__", alter_sys=True)
    finally:
        mark("cli returned")
        flush()


if __name__ == "__main__":
    main()
