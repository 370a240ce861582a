"""The HTML form of a job report, for e-mail (Veeam's report mails: a coloured status line,
the run's facts, then one table row per VM).

Pure: a :class:`~vmkeep.runtime.notify.JobReport`'s fields in, one self-contained HTML document
out (inline styles only — mail clients drop ``<style>`` and scripts; nothing is loaded from
elsewhere).  Every value is escaped: VM names, errors and warnings come from vCenter and guests.
The plain-text part of the mail is Apprise's conversion of this document; chat and webhook
targets get the text body (:meth:`JobReport.body`) instead.
"""

from __future__ import annotations

from html import escape
from typing import Any

#: status -> (title word, colour of the status bar)
STATUS_STYLE = {
    "failure": ("Failed", "#c62828"),
    "warning": ("Warning", "#ef8f00"),
    "success": ("Success", "#2e7d32"),
}
_CELL = "border:1px solid #c8c8c8;padding:4px 8px;text-align:left;vertical-align:top"
_MAX_ROWS = 500


def render(report: Any, facts: list[str], details: list[str]) -> str:
    """The report as HTML: ``facts`` (the text body's head lines, ``Key: value``), the
    warnings, a table of the VMs when the summary is a VM backup, else ``details`` verbatim."""
    word, colour = STATUS_STYLE.get(report.status, ("?", "#555555"))
    parts = [
        "<!DOCTYPE html><html><body style=\"font-family:Segoe UI,Helvetica,Arial,sans-serif;"
        "font-size:13px;color:#222\">",
        f"<div style=\"background:{colour};color:#fff;padding:8px 12px;font-size:16px\">"
        f"<b>{escape(word)}</b> &mdash; {escape(report.title())}</div>",
    ]
    for line in facts:  # one line each, so that the mail's plain part reads like the text body
        key, _, value = line.partition(": ")
        parts.append(f"<div style=\"margin:2px 0\">{escape(key)}: {_linked(value)}</div>")
    if report.warnings:
        parts.append(f"<h3>Warnings ({len(report.warnings)})</h3><ul>")
        parts += [f"<li>{escape(w)}</li>" for w in report.warnings[:_MAX_ROWS]]
        parts.append("</ul>")
    rows = vm_rows(report.summary or {})
    if rows:
        parts.append(_vm_table(rows))
    elif details:
        parts.append("<h3>Details</h3><pre style=\"font-size:12px\">"
                     + escape("\n".join(details)) + "</pre>")
    parts.append("<p style=\"color:#777;font-size:11px\">The whole summary is attached as "
                 "summary.json.</p></body></html>")
    return "\n".join(parts)


def _linked(value: str) -> str:
    if value.startswith(("http://", "https://")):
        return f"<a href=\"{escape(value, quote=True)}\">{escape(value)}</a>"
    return escape(value)


def vm_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """The VM summaries of a VM backup's summary (one VM or many), else ``[]``."""
    rows = summary.get("vms")
    if isinstance(rows, list):
        return [r for r in rows if isinstance(r, dict)]
    if isinstance(summary.get("vm"), str) and isinstance(summary.get("disks"), list):
        return [summary]
    return []


_COLUMNS = ("VM", "Status", "Restore point", "Consistency", "Disks", "Read", "New", "Stored",
            "Duration", "Attempts", "Details")


def _vm_table(rows: list[dict[str, Any]]) -> str:
    head = "".join(f"<th style=\"{_CELL};background:#eeeeee\">{c}</th>" for c in _COLUMNS)
    body = [f"<tr>{''.join(_cell(v) for v in _vm_cells(row))}</tr>" for row in rows[:_MAX_ROWS]]
    more = (f"<p>… and {len(rows) - _MAX_ROWS} more in summary.json</p>"
            if len(rows) > _MAX_ROWS else "")
    return ("<h3>Virtual machines</h3><table style=\"border-collapse:collapse\">"
            f"<tr>{head}</tr>" + "".join(body) + "</table>" + more)


def _cell(value: str) -> str:
    return f"<td style=\"{_CELL}\">{value}</td>"


def _vm_cells(row: dict[str, Any]) -> list[str]:
    """One VM's cells, escaped; the status coloured."""
    attempts = str(row.get("attempts") or 1) if "attempts" in row else ""
    if "error" in row:
        return [escape(str(row.get("vm", "?"))),
                _status("failure", "Failed"), "", "", "", "", "", "", "", escape(attempts),
                escape(str(row["error"]))]
    disks = [d for d in row.get("disks") or () if isinstance(d, dict)]
    warnings = [str(w) for w in row.get("warnings") or ()]
    status = ("warning", "Warning") if warnings else ("success", "Success")
    point = row.get("short_id") or str(row.get("id") or "")[:8]
    duration = row.get("duration_s")
    return [
        escape(str(row.get("vm", "?"))),
        _status(*status),
        escape(str(point)),
        escape(str(row.get("consistency") or "")),
        escape(", ".join(f"{d.get('mode', '?')}" for d in disks)),
        _bytes(sum(d.get("bytes_read") or 0 for d in disks)),
        _bytes(sum(d.get("bytes_new") or 0 for d in disks)),
        _bytes(sum(d.get("bytes_stored") or 0 for d in disks)),
        f"{duration:.1f} s" if isinstance(duration, (int, float)) else "",
        escape(attempts),
        "<br>".join(escape(w) for w in warnings),
    ]


def _status(status: str, word: str) -> str:
    return f"<b style=\"color:{STATUS_STYLE[status][1]}\">{word}</b>"


def _bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
