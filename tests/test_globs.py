"""Glob bracket expressions read as :mod:`fnmatch` reads them, by ``find`` (RE2, through
pyarrow) and by exclude patterns (Python's :mod:`re`) alike; a class the engines refuse
(``[z-a]``) is a usage error naming the pattern, never a traceback."""

from __future__ import annotations

import fnmatch
import re

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmkeep.browse.catalog import glob_regex
from vmkeep.errors import UsageError
from vmkeep.guestfiles.excludes import Excludes

#: pattern characters that mean something to a glob, to re or to RE2, and two plain letters
ALPHABET = "ab[]!^-\\*?&~|"


@given(pattern=st.text(ALPHABET, min_size=1, max_size=8).filter(lambda p: p[0] != "!"),
       names=st.lists(st.text(ALPHABET.replace("*", "").replace("?", ""), max_size=4),
                      min_size=1, max_size=12))
def test_patterns_match_as_fnmatch_in_both_engines(pattern: str, names: list[str]) -> None:
    want = [fnmatch.fnmatchcase(name, pattern) for name in names]
    regex = glob_regex(pattern)
    try:
        compiled = re.compile(regex)
    except re.error:  # a reversed range, which fnmatch reads as matching nothing
        with pytest.raises(UsageError, match="exclude pattern"):
            Excludes([pattern])
        return
    assert [bool(compiled.match(name)) for name in names] == want, regex
    column = pa.array(names, pa.string())
    assert pc.match_substring_regex(column, regex).to_pylist() == want, regex
    excludes = Excludes([pattern])
    assert [excludes.match(name, is_dir=False) for name in names] == want


@pytest.mark.parametrize("pattern", ["[z-a]", "x[b-a]*"])
def test_a_class_the_engines_refuse_is_a_usage_error(pattern: str) -> None:
    with pytest.raises(UsageError, match=re.escape(repr(pattern))):
        Excludes([pattern])
