"""Names in markdown reports (Prefect artifacts) are literal text."""

from __future__ import annotations

from vmkeep.markdown import literal


def test_a_name_is_never_markdown_syntax() -> None:
    assert literal("web01") == "web01"
    assert literal("[x](http://e)") == "\\[x\\]\\(http://e\\)"  # not a link
    assert literal("db_*prod*") == "db\\_\\*prod\\*"  # not emphasis
    assert literal("a|b") == "a\\|b"  # not a table cell boundary
    assert literal("two\nlines") == "two lines"
    assert literal("back\\slash") == "back\\\\slash"
