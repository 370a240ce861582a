"""Rendering a :class:`~vmkeep.licensing.check.LicenceDecision` or a plan for people: markdown (the
Prefect artifact), table rows (the Prefect table artifact, the CLI table) and plain text lines.
"""

from __future__ import annotations

from typing import Any

from vmkeep.licensing.check import LicenceDecision
from vmkeep.licensing.model import Meter, Requirements, Sku
from vmkeep.markdown import literal


def _percent(m: Meter) -> str:
    ratio = m.ratio
    if ratio == float("inf"):
        return "—"
    return f"{100 * ratio:.0f} %"


def _state(m: Meter) -> str:
    if m.over:
        return "OVER"
    if m.licensed and m.ratio >= 0.9:
        return "warning"
    return "ok"


def table_rows(decision: LicenceDecision) -> list[dict[str, Any]]:
    """One row per meter: meter, SKU, used before the run, used, licensed, percent, state."""
    return [
        {
            "meter": m.title,
            "sku": m.sku.label if m.sku else "—",
            "used_before": decision.used_before.get(m.name, 0),
            "used": m.used,
            "licensed": m.licensed,
            "percent": _percent(m),
            "state": _state(m),
        }
        for m in decision.meters
    ]


def _md_escape(text: str) -> str:
    """vmkeep's own message text in a report line or table cell: one line, no ``|`` (its code
    spans stay code); names go through :func:`vmkeep.markdown.literal`."""
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(decision: LicenceDecision, title: str = "vmkeep licence") -> str:
    """The licence report as markdown: licence, verdict, meter table, warnings."""
    lines = [f"# {_md_escape(title)}", ""]
    lic = decision.licence
    if decision.tier == "community":
        lines.append("**Community tier** (no licence installed).")
    if lic is not None:
        lines.append(
            f"**Licence** `{_md_escape(lic.licence_id)}` for **{literal(lic.customer)}**,"
            f" issued {lic.issued.isoformat()}, expires {lic.expires.isoformat()}"
            f" ({lic.days_left(decision.checked_at)} day(s) left)."
        )
    if decision.problem is not None:
        lines.append(f"**No usable licence:** {_md_escape(decision.problem.get_message())}")
    lines.append("")
    if decision.refusal is not None:
        lines.append(f"**REFUSED:** {_md_escape(decision.refusal.get_message())}")
    else:
        lines.append(f"**{decision.operation.capitalize()} allowed.**")
    lines += [
        "",
        "| Meter | SKU | Before run | Used | Licensed | Use | State |",
        "| --- | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for row in table_rows(decision):
        lines.append(
            f"| {row['meter']} | {row['sku']} | {row['used_before']} | {row['used']} |"
            f" {row['licensed']} | {row['percent']} | {row['state']} |"
        )
    if decision.shortfall:
        lines += ["", "**To cover all usage, add:** " + missing_text(decision.shortfall)]
    if decision.warnings:
        lines += ["", "## Warnings", ""]
        lines += [f"- {_md_escape(w)}" for w in decision.warnings]
    return "\n".join(lines) + "\n"


def render_warning_markdown(decision: LicenceDecision) -> str:
    """The short warning artifact (>= 90 % use, over-use, near expiry)."""
    lines = ["# vmkeep licence warning", ""]
    lines += [f"- {_md_escape(w)}" for w in decision.warnings]
    return "\n".join(lines) + "\n"


def missing_text(skus: dict[Sku, int] | Any) -> str:
    return ", ".join(f"{n}× {Sku(sku).label}" for sku, n in dict(skus).items())


def requirement_rows(req: Requirements) -> list[tuple[str, str, int]]:
    """(SKU label, SKU key, count) for every SKU, in price-list order."""
    return [(sku.label, sku.value, req[sku]) for sku in Sku]


def render_plan_text(req: Requirements, notes: tuple[str, ...] = ()) -> str:
    """A plain-text table of a plan, then its notes."""
    rows = requirement_rows(req)
    width = max(len(label) for label, _, _ in rows)
    out = [f"{'Licence':<{width}}  Count", f"{'-' * width}  -----"]
    out += [f"{label:<{width}}  {n:>5}" for label, _, n in rows]
    if notes:
        out.append("")
        out += [f"* {n}" for n in notes]
    return "\n".join(out) + "\n"
