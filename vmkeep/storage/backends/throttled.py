"""A backend whose transfers keep to the process's bandwidth limits (:mod:`..rate_limit`).

Uploads: ``put`` hands the upload limiter's ``take`` to the inner backend's
``put_paced(key, data, pace)``, which calls it before each slice it sends — the local, SFTP and
SMB backends write the temporary object slice by slice, so the link is paced during the
transfer, not only between objects.  Object stores (``s3://`` …) publish an object in one
request: their ``put_paced`` (the :class:`~vmkeep.storage.backend.Backend` default) books the
whole object before sending it, which keeps the average over every object, not within one.

Downloads: an object larger than one slice is read as consecutive ranged ``get`` calls of
:data:`~vmkeep.storage.rate_limit.SLICE` bytes, each booked after it arrived (after the first,
the object's ``size`` bounds the slices: one more request per large read).  Only immutable
objects (packs, indexes, manifests) are that large; ``config`` and lock files, which are
replaced in place, are smaller than a slice and so read in one call (the first slice's short
answer is the whole object): a reader never joins slices of two versions.

Everything else (listing, sizes, deletes) passes through unpaced.  Retries wrap this backend
(:func:`~vmkeep.storage.backend.open_backend`), so a retried transfer is paced again.
"""

from __future__ import annotations

from vmkeep.storage.backend import Backend, WrappingBackend
from vmkeep.storage.rate_limit import SLICE, Limits


class ThrottledBackend(WrappingBackend):
    """Wraps ``inner``; see the module docstring."""

    def __init__(self, inner: Backend, limits: Limits) -> None:
        super().__init__(inner)
        self.limits = limits

    def reconnect(self) -> None:
        """Forwarded to the inner backend (the retry wrapper calls it before a retry)."""
        reconnect = getattr(self.inner, "reconnect", None)
        if callable(reconnect):
            reconnect()

    def put(self, key: str, data: bytes | memoryview) -> None:
        if self.limits.upload is None:
            self.inner.put(key, data)
        else:
            self.inner.put_paced(key, data, self.limits.upload.take)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        limiter = self.limits.download
        if limiter is None or length == 0:
            return self.inner.get(key, offset, length)
        first_want = SLICE if length is None else min(SLICE, length)
        first = self.inner.get(key, offset, first_want)
        limiter.take(len(first))
        if len(first) < first_want or first_want == length:
            return first  # the whole answer: a small object, or a range of one slice
        # a large object, so an immutable one: its size bounds the rest (a range starting at
        # the end is an error on object stores, not an empty answer)
        end = self.inner.size(key) if length is None else min(offset + length, self.inner.size(key))
        pieces, offset = [first], offset + len(first)
        while offset < end:
            piece = self.inner.get(key, offset, min(SLICE, end - offset))
            limiter.take(len(piece))
            pieces.append(piece)
            offset += len(piece)
            if not piece:
                break
        return b"".join(pieces)

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def top_level_names(self) -> tuple[str, ...] | None:
        return self.inner.top_level_names()
