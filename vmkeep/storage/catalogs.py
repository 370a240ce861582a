"""Catalog objects as the storage layer sees them: where they live and the Parquet they are.

A catalog (``catalog/<point id>.parquet``) is a derived file-name index of one image or VM
restore point; its columns, metadata and versions are specified — and built — by
:mod:`vmkeep.browse.catalog`, which this layer must not import.  Here: the key, and the Parquet
encoding every writer and reader shares (so ``vmkeep check`` can tell a damaged catalog without
knowing its columns).

Parquet, zstd-compressed, with a CRC-32 over every page (Parquet's ``page_checksum``, written
since 2026-12): a reader verifies them, so a catalog damaged on a plaintext target (a flipped
bit on a NAS) reads as damaged — :class:`~vmkeep.storage.errors.FormatError` — never as other
names.  An encrypted repository's objects are authenticated besides (a damaged one fails its
get with :class:`~vmkeep.storage.errors.DataCorrupt`).  Catalogs written before have no page
checksums and are read as they are.  Prune deletes the catalogs of points that no longer exist.
"""

from __future__ import annotations

import io
import re

import pyarrow as pa
import pyarrow.parquet as pq

from vmkeep.storage.errors import FormatError

#: Prefix of the catalogs (one object per point; prune deletes orphaned ones).
CATALOG_PREFIX = "catalog"


def catalog_key(point_id: str) -> str:
    """The object holding the catalog of restore point ``point_id``."""
    return f"{CATALOG_PREFIX}/{point_id}.parquet"


_CATALOG_KEY = re.compile(rf"{CATALOG_PREFIX}/([0-9a-f]{{64}})\.parquet")


def catalog_point(key: str) -> str | None:
    """The id of the restore point whose catalog ``key`` is, or ``None`` for any other name
    (only keys of the exact form :func:`catalog_key` makes are catalogs)."""
    found = _CATALOG_KEY.fullmatch(key)
    return found.group(1) if found else None


def encode_table(table: pa.Table) -> bytes:
    """``table`` as a catalog object's bytes (page checksums on)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd", write_page_checksum=True)
    return sink.getvalue()


def decode_table(data: bytes, key: str) -> pa.Table:
    """The table in catalog object ``key``, every page checksum verified; raises
    :class:`FormatError` ("unreadable catalog: …") when it is not Parquet or is damaged."""
    try:
        return pq.ParquetFile(pa.BufferReader(data), page_checksum_verification=True).read(
            use_threads=False
        )
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise FormatError(key, f"unreadable catalog: {exc}") from None
