r"""The narrow storage interface every target implements, and its contract.

A :class:`Backend` stores immutable objects under slash-separated keys (``config``,
``packs/ab/ab12…``, ``index/…``, ``manifests/….parquet``, ``locks/…``).  The repository never
needs anything else from a target, which is what lets one repository live on a local disk, a NAS
(SFTP, SMB) or an object store.

Contract (checked by ``tests/storage/test_backend_contract.py`` for every implementation):

``put(key, data)``
    Atomic: afterwards either the whole object is visible under ``key`` or — after any exception,
    including a crash — nothing is.  Never publishes a partial object under its final name.
    Overwriting an existing key replaces it atomically (only ``config`` and ``locks/`` rely on
    that).  Not retried here: wrappers (:mod:`vmkeep.storage.backends.retrying`) retry transient
    failures; ``put`` of the same bytes is idempotent, so a retry is safe.
``put_paced(key, data, pace)``
    ``put`` under a bandwidth limit: ``pace(n)`` is called before each ``n`` bytes are sent and
    may sleep.  Backends that write an object piece by piece call it per slice (at most
    :data:`vmkeep.storage.rate_limit.SLICE` bytes); the default books the whole object, then
    ``put``\s it.  Same atomicity as ``put``.
``get(key, offset=0, length=None)``
    Returns the bytes (a range when ``length`` is given; a short result means the object is
    shorter).  Raises :class:`~vmkeep.storage.errors.ObjectNotFound` when absent.
``size(key)`` / ``exists(key)``
    ``size`` raises ``ObjectNotFound`` when absent.
``list(prefix)``
    Yields ``(key, size)`` for every object whose key starts with ``prefix/``, in no order.
    Objects being written (temporary names) are never listed.
``list_times(prefix)``
    Like ``list`` but yields ``(key, size, mtime)``: the time (POSIX seconds) the object was
    stored, from the target's clock, or ``None`` when the target cannot tell.  Prune's grace
    period relies on it: an object of unknown age is treated as new and never deleted.
``list_temporary(prefix)`` (optional; the default yields nothing)
    Yields ``(key, size, mtime)`` for the temporary objects (names starting with
    :data:`TEMP_MARKER`) under ``prefix/`` — ``""`` for the whole repository — that writers left
    behind when they crashed before publishing; ``mtime`` as for ``list_times``.  Only targets
    that write temporary names (local, SFTP, SMB …) implement it; prune deletes the ones older
    than its grace period.  A temporary object may also be a write still in flight.
``delete(key)``
    Removes the object; deleting a missing object is not an error (idempotent).  Only prune and
    lock release delete, never a backup.
``free_space()`` (optional; the default ``None``)
    ``(total, free)`` bytes of the file system or share holding the location, as this client
    may use it (quotas and reserved blocks count), or ``None`` where the target cannot tell
    (SFTP, object stores).  Read-only and cheap (one ``statvfs`` or SMB query); for warnings
    only — a write past the end still raises ``TargetFull``.

Errors: targets map their exceptions onto :mod:`vmkeep.storage.errors` —
``TargetFull`` (ENOSPC, quota), ``TargetUnreachable`` (transient network failures),
``TargetPermissionDenied``, ``ObjectNotFound``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator
from typing import Any

TEMP_MARKER = ".vmkeep-tmp-"
#: Protocols reached over a network: :func:`open_backend` wraps them in bounded retries.
NETWORK_PROTOCOLS = frozenset(
    {"sftp", "ssh", "smb", "s3", "s3a", "gs", "gcs", "az", "abfs", "http", "https", "webdav"}
)


class Backend(abc.ABC):
    """A store of immutable objects under slash-separated keys.  See the module docstring."""

    #: Human-readable location, for messages.  Never contains credentials.
    location: str = ""

    @abc.abstractmethod
    def put(self, key: str, data: bytes | memoryview) -> None: ...

    def put_paced(self, key: str, data: bytes | memoryview, pace: Callable[[int], None]) -> None:
        """``put`` calling ``pace(n)`` before sending ``n`` bytes (see the module docstring)."""
        pace(memoryview(data).nbytes)
        self.put(key, data)

    @abc.abstractmethod
    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes: ...

    @abc.abstractmethod
    def size(self, key: str) -> int: ...

    @abc.abstractmethod
    def list(self, prefix: str) -> Iterator[tuple[str, int]]: ...

    @abc.abstractmethod
    def delete(self, key: str) -> None: ...

    def list_times(self, prefix: str) -> Iterator[tuple[str, int, float | None]]:
        """``list`` with modification times (``None``: unknown, so treated as new)."""
        for key, size in self.list(prefix):
            yield key, size, None

    def list_temporary(self, prefix: str) -> Iterator[tuple[str, int, float | None]]:
        """Temporary objects left under ``prefix`` (``""``: everywhere); none by default."""
        return iter(())

    def top_level_names(self) -> tuple[str, ...] | None:
        """The names directly under the location (``init`` refuses a location holding other
        things than a repository); None where that cannot be told cheaply and safely."""
        return None

    def free_space(self) -> tuple[int, int] | None:
        """``(total, free)`` bytes where the objects live; ``None``: unknown (the default)."""
        return None

    def exists(self, key: str) -> bool:
        from vmkeep.storage.errors import ObjectNotFound

        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the backend must not be used afterwards."""


class WrappingBackend(Backend):
    """A backend around ``inner`` that forwards every call of the contract (and ``location``):
    the wrappers — retries, bandwidth limits, encryption, injected faults — override only what
    they change.  ``put_paced`` keeps the base rule (book, then ``put``) unless a wrapper says
    otherwise."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.location = inner.location

    def put(self, key: str, data: bytes | memoryview) -> None:
        self.inner.put(key, data)

    def get(self, key: str, offset: int = 0, length: int | None = None) -> bytes:
        return self.inner.get(key, offset, length)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        return self.inner.list(prefix)

    def list_times(self, prefix: str) -> Iterator[tuple[str, int, float | None]]:
        return self.inner.list_times(prefix)

    def list_temporary(self, prefix: str) -> Iterator[tuple[str, int, float | None]]:
        return self.inner.list_temporary(prefix)

    def free_space(self) -> tuple[int, int] | None:
        return self.inner.free_space()

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()


def open_backend(url: str, storage_options: dict[str, Any] | None = None) -> Backend:
    """Open the backend for ``url``: a plain path or ``file://`` (local, fsync'ed atomic
    commits) or any other fsspec URL (``memory://``, ``sftp://``, ``smb://``, ``s3://`` …).
    Transfers keep to ``VMKEEP_LIMIT_UPLOAD`` / ``VMKEEP_LIMIT_DOWNLOAD`` when set
    (:mod:`vmkeep.storage.rate_limit`)."""
    if "://" not in url or url.startswith("file://"):
        from vmkeep.storage.backends.local import LocalBackend

        return _throttled(LocalBackend(url.removeprefix("file://")))
    check_url(url)
    from vmkeep.storage.backends.fsspec_backend import FsspecBackend  # fsspec: ~50 ms to import

    backend: Backend = FsspecBackend(url, storage_options or {})
    backend = _throttled(backend)
    if url.split("://", 1)[0] in NETWORK_PROTOCOLS:
        from vmkeep.storage.backends.retrying import RetryingBackend

        backend = RetryingBackend(backend)
    return backend


#: URL forms whose first part (host, bucket, container) cannot be left out, as users write them
_URL_FORMS = {
    "sftp": ("host", "sftp://[USER@]HOST[:PORT]/PATH"),
    "ssh": ("host", "ssh://[USER@]HOST[:PORT]/PATH"),
    "smb": ("host", "smb://[USER@]HOST[:PORT]/SHARE/PATH"),
    "s3": ("bucket", "s3://BUCKET/PATH"), "s3a": ("bucket", "s3a://BUCKET/PATH"),
    "gs": ("bucket", "gs://BUCKET/PATH"), "gcs": ("bucket", "gcs://BUCKET/PATH"),
    "az": ("container", "az://CONTAINER/PATH"), "abfs": ("container", "abfs://CONTAINER/PATH"),
}


def check_url(url: str, what: str = "repository") -> None:
    """A :class:`~vmkeep.errors.UsageError` for a URL (of the ``what``: repository, source,
    target) missing its host or bucket, with a port that is not one or an address that does
    not parse (fsspec would fail deep inside, e.g. with a ``TypeError`` about ``host``)."""
    from vmkeep.errors import UsageError
    from vmkeep.urls import split_url

    protocol, rest = url.split("://", 1)
    known = _URL_FORMS.get(protocol.lower())
    if known is None:
        return
    noun, form = known
    if noun == "host":
        first = split_url(url, f"the {what} URL", form)[0].hostname
    else:
        first = rest.split("/", 1)[0]
    if not first:
        raise UsageError(f"the {what} URL names no {noun}: write it {form}")


def _throttled(backend: Backend) -> Backend:
    """``backend`` under the process's bandwidth limits, if any are set (inside the retry
    wrapper: a retried transfer is paced again)."""
    from vmkeep.storage.rate_limit import current

    limits = current()
    if not limits:
        return backend
    from vmkeep.storage.backends.throttled import ThrottledBackend

    return ThrottledBackend(backend, limits)
