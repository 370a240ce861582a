"""The README's first screen is the newcomer's path; every relative link in the docs resolves."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lowercase, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


def test_readme_first_screen() -> None:
    first = "\n".join((ROOT / "README.md").read_text().splitlines()[:60])
    for needle in (
        "make demo",
        "make test",
        "## Try it",
        "## Back up your first VM",
        "vmkeep init",
        "vmkeep backup vm",
        "vmkeep list",
        "vmkeep restore files",
        "vmkeep restore vm",
        "## Run it on a schedule",
        "vmkeep serve",
    ):
        assert needle in first, needle


def test_relative_links_resolve() -> None:
    bad = []
    for doc in DOCS:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                bad.append(f"{doc.name}: {target}")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest.read_text()):
                bad.append(f"{doc.name}: {target} (no such heading)")
    assert not bad, bad
