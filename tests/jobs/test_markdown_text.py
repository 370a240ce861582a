"""Names in markdown reports (the boot verification's Prefect artifact) are literal text."""

from __future__ import annotations

from vmkeep.jobs.verify import markdown_text


def test_a_name_is_never_markdown_syntax() -> None:
    assert markdown_text("web01") == "web01"
    assert markdown_text("[x](http://e)") == "\\[x\\]\\(http://e\\)"  # not a link
    assert markdown_text("db_*prod*") == "db\\_\\*prod\\*"  # not emphasis
    assert markdown_text("a|b") == "a\\|b"  # not a table cell boundary
    assert markdown_text("two\nlines") == "two lines"
    assert markdown_text("back\\slash") == "back\\\\slash"
