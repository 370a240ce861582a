"""SCSI access for tape: one transport interface, typed errors, SSC drives and SMC changers.

Plain Python, no Prefect.  Layout:

* ``transport.py`` — the ``execute(cdb, data_out | data_in_len, timeout) -> (data, residual)``
  contract and :func:`~vmkeep.scsi.transport.open_transport` (``iscsi://`` or ``sg://``);
* ``iscsi.py`` — ctypes binding to libiscsi (user-space iSCSI, e.g. the lab's tgt VTL);
* ``sg.py`` — the kernel's SG_IO ioctl on ``/dev/sgN`` (real drives and changers);
* ``sense.py`` / ``errors.py`` — sense decoding and the error classes;
* ``ssc.py`` — tape drive commands; ``smc.py`` — changer commands.

Facts about tgt's emulation (Debian tgt 1.0.85), which differ from real drives and are handled
in ``ssc.py``/``smc.py``: READ POSITION is a stub (position unknown); LOCATE and ERASE are
unsupported; SPACE blocks does not stop at filemarks (only SPACE filemarks and SPACE to end of
data are used); end of data is BLANK CHECK + EOM in variable mode; a write past capacity returns
NO SENSE with EOM but is written (early warning) and VOLUME OVERFLOW never comes; READ ELEMENT
STATUS for all types at once is malformed (query per type) and the last descriptor loses 8
bytes; a READ with the wrong length returns ILI and no data; load/unload are no-ops.
"""
