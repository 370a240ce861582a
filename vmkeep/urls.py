"""URLs a user typed (a repository, a source or restore target, a vCenter, an iSCSI portal):
one reading and one error for every option that takes one.

:func:`split_url` is :func:`urllib.parse.urlsplit` with its port read at once: a port that is
no number or out of range, or an address that does not parse (``[::1``), is a
:class:`~vmkeep.errors.UsageError` (exit 2) naming what was given and the form to write —
never a ``ValueError`` traceback from deep inside a client library.  The URL itself is not
echoed (it may hold a password); the parser's reason is.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

from vmkeep.errors import UsageError


def split_url(url: str, what: str, form: str) -> tuple[SplitResult, int | None]:
    """``(urlsplit(url), its port)``; ``what`` names the URL in the error ("the repository
    URL"), ``form`` shows how to write it."""
    try:
        parts = urlsplit(url)
        return parts, parts.port
    except ValueError as exc:  # a port that is no number or out of range, a broken IPv6 address
        raise UsageError(f"{what} does not parse ({exc}): write it {form}") from None
