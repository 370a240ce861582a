"""vmkeep.browse: files out of image and VM restore points, without restoring a disk first.

Plain Python (no Prefect) standing on :mod:`vmkeep.storage` (the random-access
:class:`~vmkeep.storage.reader.PointReader`) and :mod:`vmkeep.disks` (volumes, guest file systems,
the safe writer).  Tasks, flows and the CLI call it; it never imports them.

=================  ==========================================================================
``errors``         typed errors (bad volume or path: exit code 14; incomplete restore: 3)
``point``          :class:`PointImage` — a restore point's disks as raw readers, its volumes
                   (``disk0-p1``, aliases ``p1``) and their file systems; ``POINT:VOL/PATH``
``listing``        ``ls`` rows (JSON shape shared by image and file restore points)
``local``          restore chosen paths into a local folder through the safe writer
``guest``          restore chosen paths into a running guest through guest operations
``catalog``        the per-point file-name index behind ``vmkeep find`` (Parquet, immutable)
``vmdk_export``    a monolithicFlat descriptor beside an exported raw disk
=================  ==========================================================================

Reads fetch only the chunks they touch: opening a point reads its manifest and the repository
index; listing a directory reads that directory's metadata; restoring a file reads its extents.
"""
