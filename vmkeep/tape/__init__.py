"""Tape jobs: restore points from a disk repository to cartridges and back, in an open format.

Glossary: a *library* (changer + drives, configured once by name: ``library.py``) holds
*cartridges* (barcodes) in *slots*; each cartridge belongs to a *pool* (retention, append
rule).  File 0 of a cartridge is its *label* (``label.py``); every further *tape file* is a
POSIX pax archive of repository objects (``pax.py``; spec in docs/format.md "Tape") written in
whole blocks through a ring buffer (``stream.py``).  The repository keeps a *catalog record* per
tape file (``catalog.py``).  Jobs: ``copy.py`` (disk → tape), ``restore.py`` (tape → disk,
and ``scan``: rebuild the catalog from the tapes).  Plain Python over ``storage/`` and
``scsi/``; no Prefect.
"""
