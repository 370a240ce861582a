"""vmkeep.storage — the repository format, its targets and the data path.

Glossary
--------
chunk        a piece of a disk (fixed size for images) or of a file (content-defined)
blob         a stored chunk: its id is the keyed BLAKE3 of the raw chunk, its payload zstd or raw
pack         an immutable object holding many blobs plus a trailer (pack.py)
index        an immutable Parquet file mapping blob ids to packs (index.py)
restore point  a Parquet manifest listing every chunk of every disk (manifest.py); each one is a
             full logical image, however it was produced (full, scan or CBT)
header       a manifest's JSON metadata, validated by schema before use (point_header.py)
backend      where objects live: local disk, NAS, object store (backend.py)

Commit order
------------
packs → index → manifest, each object published atomically (``Backend.put``).  A restore point
exists only when its manifest exists, so a crash at any moment leaves older points intact and at
worst some unreferenced packs or indexes.

Who may delete
--------------
Backups only add objects.  Prune alone deletes unreferenced packs and superseded indexes, after a
grace period, under an exclusive lock; ``forget`` deletes manifests.

This package imports neither Prefect nor pyVmomi (checked by import-linter).
"""
