"""Job reports by e-mail, chat or webhook: one message per job run, sent where the admin says.

Where they go: ``VMKEEP_NOTIFY`` (one or more `Apprise <https://github.com/caronc/apprise>`_ URLs
— ``mailtos://user:pass@smtp.example.com?to=backup-admins@example.com``, ``json://host/path``,
``slack://…``, ``msteams://…``, ``ntfy://…`` — separated by spaces or newlines) or
``VMKEEP_NOTIFY_FILE`` (a file of them, one per line, ``#`` comments).  Runs under Prefect that
have neither read the Secret block :data:`BLOCK` (``vmkeep serve`` saves it from the
environment it was started with), so data movers need no copy of the URLs.  Which reports go:
``VMKEEP_NOTIFY_ON``, a comma list of ``failure``, ``warning``, ``success`` (default
``failure,warning``).

Contract:

* **One report per top-level job run**, sent after the job ended, from the process that ran it
  (the CLI, a deployment's flow run, a script's ``run_flow``).  Child jobs — the VMs of a
  ``backup-vms`` run — are lines of their parent's report, not reports of their own.  A run
  that Prefect will retry (a transient error with retries left) sends nothing; its last attempt
  does.  A flow run whose process died is reported by the flow's ``on_crashed`` hook
  (:func:`vmkeep.runtime.prefect_reports.report_crash`): in the process on SIGTERM, in the
  process worker that started it on SIGKILL or out of memory.
* **Status**: ``failure`` when the job raised; ``warning`` when it returned but logged a warning
  (any ``WARNING`` record on the ``vmkeep`` logger or the run's logger while it ran) or its
  summary lists ``warnings``; else ``success``.
* **Content**: the title ``[Failed] vmkeep backup-vms web* on HOST`` (Veeam's ``[Success]`` /
  ``[Warning]`` / ``[Failed]`` convention), a body (job, target, host, start, duration, the
  error, the warnings, one line per VM), the Prefect run's page when there is one, and the job's
  whole JSON summary attached as ``summary.json`` (targets that take attachments).  E-mail gets
  the body as HTML with a table row per VM (:mod:`vmkeep.runtime.report_html`; the plain part
  is its text), every other target plain text.
* **Sending never changes the job's outcome**: its result and exit code are the same whether the
  report went out or not.  A target that refuses, times out (Apprise's own timeouts: connect
  4 s, 15 s for SMTP, read 4 s; ``?cto=…&rto=…`` in the URL) or is unreachable is logged as a
  warning ``job report not sent …``, with the URL's secrets masked; nothing is retried or queued.
* URLs carry passwords: they never appear in logs, reports, Prefect parameters or ``argv``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vmkeep.errors import InputError, Terminated, VmkeepError
from vmkeep.settings import settings

log = logging.getLogger("vmkeep.notify")

STATUSES = ("failure", "warning", "success")
DEFAULT_ON = frozenset({"failure", "warning"})
#: the Prefect Secret block ``vmkeep serve`` saves: ``{"urls": [...], "on": "failure,warning"}``
BLOCK = "vmkeep-notify"
_TITLES = {"failure": "Failed", "warning": "Warning", "success": "Success"}
_MAX_WARNINGS = 20
_MAX_LINES = 40
#: the loggers whose warnings make a run's status ``warning``
_WATCHED_LOGGERS = ("vmkeep", "prefect.flow_runs", "prefect.task_runs")


class NotifySettingsError(InputError):
    """Notifications: {}"""


@dataclass(frozen=True)
class NotifyConfig:
    """Where reports go (``urls``) and which statuses are sent (``on``)."""

    urls: tuple[str, ...]
    on: frozenset[str] = DEFAULT_ON

    @classmethod
    def from_settings(cls, strict: bool = True) -> NotifyConfig | None:
        """From ``VMKEEP_NOTIFY`` / ``VMKEEP_NOTIFY_FILE`` / ``VMKEEP_NOTIFY_ON``; ``None`` when
        no URL is set.  An unreadable file or an unknown status raises
        :class:`NotifySettingsError` when ``strict``; otherwise it is logged as a warning (the
        job's report then says so) and the rest is used: a job is never refused for its
        notification settings."""
        env = settings()
        text = env.secret("notify") or ""
        if env.notify_file is not None:
            try:
                text += "\n" + Path(env.notify_file).read_text(encoding="utf-8")
            except OSError as exc:
                _complain(strict, f"VMKEEP_NOTIFY_FILE {env.notify_file}: "
                                  f"{exc.strerror or exc}")
            except UnicodeDecodeError:
                _complain(strict, f"VMKEEP_NOTIFY_FILE {env.notify_file}: not UTF-8 text")
        urls = parse_urls(text)
        try:
            on = parse_on(env.notify_on)
        except NotifySettingsError as exc:
            _complain(strict, exc.args[0] + "; sending failure,warning reports")
            on = DEFAULT_ON
        return cls(urls, on) if urls else None

    @classmethod
    def from_block_value(cls, value: Any) -> NotifyConfig | None:
        """From the Secret block's value: ``{"urls": [...], "on": "…"}`` (or that as JSON).
        A value of another shape is a warning and sends nothing; an unknown status a warning
        and the default statuses (an admin edits the block in the UI)."""
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                value = None
        if not isinstance(value, dict) or not isinstance(value.get("urls") or [], list):
            log.warning('notifications: Secret block %s is not {"urls": [...], "on": "..."}',
                        BLOCK)
            return None
        urls = parse_urls("\n".join(str(url) for url in value.get("urls") or ()))
        try:
            on = parse_on(value.get("on"))
        except NotifySettingsError as exc:
            log.warning("notifications: Secret block %s: %s; sending failure,warning reports",
                        BLOCK, exc.args[0])
            on = DEFAULT_ON
        return cls(urls, on) if urls else None

    def block_value(self) -> dict[str, Any]:
        """What :data:`BLOCK` stores."""
        return {"urls": list(self.urls), "on": ",".join(s for s in STATUSES if s in self.on)}


def configured() -> NotifyConfig | None:
    """The environment's settings, leniently (what a job run uses)."""
    return NotifyConfig.from_settings(strict=False)


def _complain(strict: bool, message: str) -> None:
    if strict:
        raise NotifySettingsError(message)
    log.warning("notifications: %s", message)


def parse_urls(text: str) -> tuple[str, ...]:
    """URLs separated by whitespace; lines starting with ``#`` are comments."""
    words: list[str] = []
    for line in text.splitlines():
        if not line.lstrip().startswith("#"):
            words += line.split()
    return tuple(dict.fromkeys(words))


def parse_on(text: str | None) -> frozenset[str]:
    """``failure,warning`` → the set; ``None``/empty → :data:`DEFAULT_ON`; ``all`` → every one."""
    if not text or not text.strip():
        return DEFAULT_ON
    names = {part.strip().lower() for part in text.split(",") if part.strip()}
    if names == {"all"}:
        return frozenset(STATUSES)
    unknown = names - set(STATUSES)
    if unknown:
        raise NotifySettingsError(
            f"VMKEEP_NOTIFY_ON: unknown status {', '.join(sorted(unknown))} "
            f"(give a comma list of {', '.join(STATUSES)}, or all)"
        )
    return frozenset(names)


@dataclass
class JobReport:
    """What one job run did, as sent."""

    job: str
    target: str
    status: str
    started: datetime
    seconds: float
    host: str = field(default_factory=socket.gethostname)
    error: str | None = None
    exit_code: int | None = None
    warnings: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    link: str | None = None
    run_id: str | None = None

    def title(self) -> str:
        target = f" {self.target}" if self.target else ""
        return f"[{_TITLES[self.status]}] vmkeep {self.job}{target} on {self.host}"

    def body(self) -> str:
        """The plain-text report (chat, webhooks; what mail clients without HTML show)."""
        lines = self._facts()
        if self.warnings:
            lines += ["", f"Warnings ({len(self.warnings)}):"]
            lines += [f"  - {w}" for w in self.warnings[:_MAX_WARNINGS]]
            if len(self.warnings) > _MAX_WARNINGS:
                lines.append(f"  … and {len(self.warnings) - _MAX_WARNINGS} more")
        details = _detail_lines(self.summary or {})
        if details:
            lines += ["", "Details:"]
            lines += details[:_MAX_LINES]
            if len(details) > _MAX_LINES:
                lines.append(f"  … {len(details) - _MAX_LINES} more lines in summary.json")
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        """The e-mail report (:mod:`vmkeep.runtime.report_html`): the same facts, warnings, and a
        table with a row per VM."""
        from vmkeep.runtime import report_html

        return report_html.render(self, self._facts(), _detail_lines(self.summary or {}))

    def _facts(self) -> list[str]:
        """The head lines: job, target, host, start, result, the run's page."""
        lines = [
            f"Job: {self.job}" + (f" (run {self.run_id})" if self.run_id else ""),
            *([f"Target: {self.target}"] if self.target else []),
            f"Host: {self.host}",
            f"Started: {self.started:%Y-%m-%d %H:%M:%S %Z}, took {self.seconds:.1f} s",
        ]
        if self.error is not None:
            code = f" (exit code {self.exit_code})" if self.exit_code is not None else ""
            lines.append(f"Result: failed{code}: {self.error}")
        else:
            lines.append("Result: " + ("finished with warnings" if self.warnings else "ok"))
        if self.link:
            lines.append(f"Run: {self.link}")
        return lines

    def attachment(self) -> bytes:
        """``summary.json``: the report's fields and the job's whole summary."""
        document = {
            "job": self.job, "target": self.target, "status": self.status, "host": self.host,
            "started": self.started.isoformat(), "seconds": round(self.seconds, 3),
            "error": self.error, "exit_code": self.exit_code, "warnings": self.warnings,
            "run_id": self.run_id, "link": self.link, "summary": self.summary,
        }
        return json.dumps(document, indent=2, default=str).encode()


def _detail_lines(summary: dict[str, Any]) -> list[str]:
    """One line per VM of a VM backup (one or many); else the summary's plain values."""
    rows = summary.get("vms")
    if isinstance(rows, list):
        return [_vm_line(row) for row in rows if isinstance(row, dict)]
    if isinstance(summary.get("vm"), str) and isinstance(summary.get("disks"), list):
        return [_vm_line(summary)]
    return _plain_lines(summary, "")


_SCALARS = (str, int, float, bool, type(None))
_LIST_ITEMS = 5


def _plain_lines(summary: dict[str, Any], prefix: str) -> list[str]:
    """Any other summary: its values (``key: value``), its lists counted with their first
    items, its objects one level down (``prune.bytes_freed: …``)."""
    lines: list[str] = []
    for key, value in summary.items():
        name = f"{prefix}{key}"
        if isinstance(value, _SCALARS):
            lines.append(f"  {name}: {value}")
        elif isinstance(value, list):
            lines.append(f"  {name}: {len(value)}")
            lines += [f"    - {_item(item)}" for item in value[:_LIST_ITEMS]]
            if len(value) > _LIST_ITEMS:
                lines.append(f"    … and {len(value) - _LIST_ITEMS} more")
        elif isinstance(value, dict) and not prefix:
            lines += _plain_lines(value, f"{name}.")
    return lines


def _item(item: Any) -> str:
    """A list item on one line: a value, or an object's plain values (the first six)."""
    if isinstance(item, dict):
        plain = [(k, v) for k, v in item.items() if isinstance(v, _SCALARS)][:6]
        return ", ".join(f"{k}={v}" for k, v in plain)
    return str(item)


def _vm_line(row: dict[str, Any]) -> str:
    """``  web01: ok, point 1a2b3c4d, filesystem-consistent, 2 disks, 812 MB read, 96 MB new,
    41.2 s``."""
    name = row.get("vm", "?")
    if "error" in row:
        return f"  {name}: FAILED: {row['error']}"
    point = row.get("short_id") or str(row.get("id") or "")[:8]
    facts = [f"point {point}" if point else None]
    if row.get("consistency"):
        facts.append(f"{row['consistency']}-consistent")
    disks = [d for d in row.get("disks") or () if isinstance(d, dict)]
    if disks:
        facts.append(f"{len(disks)} disk{'s' if len(disks) != 1 else ''}")
        for key, label in (("bytes_read", "read"), ("bytes_new", "new")):
            total = sum(d.get(key) or 0 for d in disks)
            facts.append(f"{total / 1e6:.0f} MB {label}")
    if isinstance(row.get("duration_s"), (int, float)):
        facts.append(f"{row['duration_s']:.1f} s")
    if row.get("warnings"):
        facts.append(f"{len(row['warnings'])} warning(s)")
    return f"  {name}: ok" + "".join(f", {fact}" for fact in facts if fact)


def summary_warnings(summary: Any) -> list[str]:
    """Every ``warnings`` list in a summary, nested ones (per VM) named by their VM."""
    found: list[str] = []
    if isinstance(summary, dict):
        own = summary.get("warnings")
        if isinstance(own, list):
            prefix = f"{summary['vm']}: " if isinstance(summary.get("vm"), str) else ""
            found += [prefix + str(w) for w in own]
        for key, value in summary.items():
            if key != "warnings" and isinstance(value, (dict, list)):
                found += summary_warnings(value)
    elif isinstance(summary, list):
        for item in summary:
            found += summary_warnings(item)
    return found


def describe(spec: Any) -> str:
    """What a job's spec works on, for the title: its ``label()`` if it has one, the VMs, the
    point, the name, the source."""
    label = getattr(spec, "label", None)
    if callable(label):
        return str(label())
    chosen = [*(getattr(spec, "names", None) or ()), *(getattr(spec, "patterns", None) or ())]
    filters = getattr(spec, "filters", None)
    narrowed = str(filters()) if callable(filters) else ""
    if chosen or narrowed:
        return ", ".join(map(str, chosen)) + (f" ({narrowed})" if narrowed else "")
    for name in ("vm", "point", "name", "source", "path", "pool"):
        value = getattr(spec, name, None)
        if isinstance(value, str) and value:
            return value
    return ""


def job_name(job: Any) -> str:
    """``backup_vms`` → ``backup-vms`` (the flow's name)."""
    return str(getattr(job, "__name__", job)).replace("_", "-")


def send(report: JobReport, config: NotifyConfig) -> bool:
    """Send ``report`` to every URL of ``config``; True when every one took it.  Never raises:
    what failed is logged as a warning (URLs masked)."""
    import apprise
    from apprise.attachment.memory import AttachMemory

    sender, bad = _apprise(config.urls)
    for url in bad:
        log.warning("job report not sent to %s: not an Apprise URL this vmkeep knows", url)
    if not len(sender):
        return False
    attachment = apprise.AppriseAttachment()
    attachment.add(
        AttachMemory(content=report.attachment(), name="summary.json", mimetype="application/json")
    )
    kind = {"failure": apprise.NotifyType.FAILURE, "warning": apprise.NotifyType.WARNING}.get(
        report.status, apprise.NotifyType.SUCCESS
    )
    ok = True
    for server in sender:  # one at a time, so that a failure names its target
        single = apprise.Apprise()
        single.add(server)
        html = _takes_html(server)
        try:
            sent = bool(single.notify(
                body=report.html() if html else report.body(), title=report.title(),
                notify_type=kind, attach=attachment,
                body_format=apprise.NotifyFormat.HTML if html else apprise.NotifyFormat.TEXT,
            ))
        except Exception as exc:  # a plugin's bug must not fail the job
            log.warning("job report not sent to %s: %r", _shown(server), exc)
            sent = False
        else:
            if not sent:
                log.warning("job report not sent to %s (the target refused it or did not "
                            "answer)", _shown(server))
        ok = ok and sent
    return ok and not bad


def _takes_html(server: Any) -> bool:
    """Whether ``server`` is an e-mail target that takes HTML (a URL's ``?format=text`` says
    no): it gets the HTML report, every other target the text one."""
    import apprise
    from apprise.plugins.email.base import NotifyEmail

    if not isinstance(server, NotifyEmail):
        return False
    try:
        return bool(server.resolve_format(apprise.NotifyFormat.HTML) == apprise.NotifyFormat.HTML)
    except Exception:  # a plugin's own rule failed: plain text is always safe
        return False


def _shown(server: Any) -> str:
    """An Apprise server's URL in its privacy form, without its query."""
    return str(server.url(privacy=True)).split("?", 1)[0]


def _apprise(urls: Iterable[str]) -> tuple[Any, list[str]]:
    """An Apprise object holding the URLs it understands, and the others (masked)."""
    import apprise

    sender = apprise.Apprise()
    bad: list[str] = []
    for url in urls:
        if not sender.add(url):
            bad.append(mask(url))
    return sender, bad


def mask(url: str) -> str:
    """The URL as it may be shown: Apprise's privacy form for the services it knows
    (``slack://T1JJ3T3L2/A...D/T...Q/``, ``mailtos://user:****@host``), without its query;
    otherwise the password of the address and every query value are hidden."""
    import apprise

    server = apprise.Apprise.instantiate(url, suppress_exceptions=True)
    if server:
        return _shown(server)
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "****"
    main, qmark, query = rest.partition("?")
    netloc, slash, path = main.partition("/")
    if "@" in netloc:
        credentials, _, hostpart = netloc.rpartition("@")
        user = credentials.split(":", 1)[0]
        netloc = f"{user}:****@{hostpart}" if ":" in credentials else f"****@{hostpart}"
    if qmark:
        query = "&".join(
            part.split("=", 1)[0] + "=****" if "=" in part else part for part in query.split("&")
        )
    return f"{scheme}://{netloc}{slash}{path}{qmark}{query}"


def send_test_reports(config: NotifyConfig) -> list[tuple[str, bool]]:
    """Send a test report to each URL; ``[(masked url, sent)]``."""
    results = []
    for url in config.urls:
        report = JobReport(
            job="notify-test", target="", status="success",
            started=datetime.now(UTC), seconds=0.0,
            summary={"message": "vmkeep can reach this notification target"},
        )
        results.append((mask(url), send(report, NotifyConfig((url,), config.on))))
    return results


_WATCH: contextvars.ContextVar[JobWatch | None] = contextvars.ContextVar(
    "vmkeep_notify_watch", default=None
)


class _WarningCollector(logging.Handler):
    """Collects WARNING records of the watched run (the context it was started in)."""

    def __init__(self, watch: JobWatch) -> None:
        super().__init__(logging.WARNING)
        self.watch = watch

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno != logging.WARNING or _WATCH.get() is not self.watch:
            return
        try:
            message = record.getMessage()
        except Exception:
            return
        if message not in self.watch.warnings:
            self.watch.warnings.append(message)


@dataclass
class JobWatch:
    """What :func:`watch` yields: the caller sets ``result`` before the block ends, ``failed``
    when it turned the job's error into something else (a Prefect ``Failed`` state), or
    ``skip`` when this run sends no report (an attempt Prefect will retry)."""

    job: str
    target: str
    config: NotifyConfig | None
    run_id: str | None = None
    link: str | None = None
    result: Any = None
    failed: BaseException | None = None
    skip: bool = False
    warnings: list[str] = field(default_factory=list)
    report: JobReport | None = None
    sent: bool | None = None


class _Loader:
    """``load()`` in a thread of its own, in the caller's context; :meth:`result` joins it."""

    def __init__(self, load: Callable[[], NotifyConfig | None]) -> None:
        self.value: NotifyConfig | None = None
        context = contextvars.copy_context()
        self.thread = threading.Thread(
            target=context.run, args=(self._run, load), name="vmkeep-notify-config", daemon=True
        )
        self.thread.start()

    def _run(self, load: Callable[[], NotifyConfig | None]) -> None:
        try:
            self.value = load()
        except Exception as exc:  # never the job's problem
            log.warning("notifications: settings not read: %r", exc)

    def result(self) -> NotifyConfig | None:
        self.thread.join()
        return self.value


@contextmanager
def watch(
    job: Any,
    spec: Any,
    load_config: Callable[[], NotifyConfig | None],
    *,
    run_id: str | None = None,
    link: str | None = None,
    report_interrupts: bool = True,
) -> Iterator[JobWatch]:
    """Run the ``with`` body as one job run and send its report by the module's rules.

    ``load_config`` runs in a thread beside the body (its warnings are the run's); ``None``
    from it: nothing is sent (warnings are still collected).  An exception from the
    body is re-raised unchanged after the report; ``report_interrupts`` False leaves
    ``KeyboardInterrupt`` and other non-``Exception`` ends to the caller (Prefect's crash
    hooks)."""
    state = JobWatch(job_name(job), describe(spec), None, run_id, link)
    collector = _WarningCollector(state)
    loggers = [logging.getLogger(name) for name in _WATCHED_LOGGERS]
    for logger in loggers:
        logger.addHandler(collector)
    token = _WATCH.set(state)
    started, clock = datetime.now(UTC), time.monotonic()
    error: BaseException | None = None
    loading = _Loader(load_config)  # beside the job: a Secret block read costs ~30 ms
    try:
        yield state
    except BaseException as exc:
        error = exc
        raise
    finally:
        error = error or state.failed
        state.config = loading.result()  # its warnings (bad settings) are the run's
        _WATCH.reset(token)
        for logger in loggers:
            logger.removeHandler(collector)
        interrupted = error is not None and not isinstance(error, Exception)
        if not state.skip and not (interrupted and not report_interrupts):
            state.report = _report(state, error, started, time.monotonic() - clock)
            config = state.config
            if config is not None and state.report.status in config.on:
                state.sent = send(state.report, config)


def _report(state: JobWatch, error: BaseException | None, started: datetime,
            seconds: float) -> JobReport:
    summary = state.result if isinstance(state.result, dict) else None
    if error is not None and summary is None:
        carried = getattr(error, "summary", None)  # e.g. SomeBackupsFailed's per-VM results
        summary = carried if isinstance(carried, dict) else None
    warnings = list(state.warnings)
    for warning in summary_warnings(summary):
        if not any(warning == w or warning.endswith(f": {w}") for w in warnings):
            warnings.append(warning)
    if error is not None:
        status = "failure"
        message = error.get_message() if isinstance(error, VmkeepError) else (
            str(error) or type(error).__name__)
        if isinstance(error, Terminated):
            message = f"terminated by {error.signame}"
        elif not isinstance(error, Exception):
            message = f"interrupted ({type(error).__name__})"
        code = getattr(error, "exit_code", None) if isinstance(error, VmkeepError) else None
    else:
        status, message, code = ("warning" if warnings else "success"), None, None
    return JobReport(
        job=state.job, target=state.target, status=status, started=started, seconds=seconds,
        error=message, exit_code=code, warnings=warnings, summary=summary,
        link=state.link, run_id=state.run_id,
    )


def crash_report(job: str, target: str, message: str, run_id: str | None,
                 link: str | None, started: datetime | None) -> JobReport:
    """The report of a run whose process died (sent by the flow's ``on_crashed`` hook)."""
    begun = started or datetime.now(UTC)
    return JobReport(
        job=job, target=target, status="failure", started=begun,
        seconds=max(0.0, (datetime.now(UTC) - begun).total_seconds()),
        error=f"the run crashed: {message}", run_id=run_id, link=link,
    )
