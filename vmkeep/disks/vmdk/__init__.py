"""VMware's virtual disk format (VMDK), in one package: every part of vmkeep that reads or
writes a VMDK structure uses these modules, never its own parser.

================  ==============================================================================
module            job
================  ==============================================================================
``descriptor``    the text descriptor: parse and validate untrusted input (bare extent names,
                  object URIs, limits; typed errors), base-image policy, and the one writer
                  (:func:`~.descriptor.render_descriptor`)
``opener``        :func:`~.opener.open_disk`: raw images and VMDKs (descriptor + flat, hosted
                  sparse, streamOptimized) as a :class:`~vmkeep.disks.image.DiskImage`
``sparse``        hosted sparse extents (``KDMV``: monolithicSparse, streamOptimized files) for
                  random access, bounded against hostile headers
``stream_optimized``  the streamOptimized format (constants, :class:`SparseHeader`, markers) and
                  its streaming reader (NFC export leases, OVA disks)
``stream_writer`` the streamOptimized writer (NFC import leases of VM restores), on the
                  reader's constants and header
``deltas``        snapshot delta chains (COWD ``VMFSSPARSE``, ``SESPARSE``) read as one
                  point-in-time disk over abstract file openers (the vSphere transports
                  supply datastore files)
``grains``        their grain tables decoded to runs (pure logic)
================  ==============================================================================

Errors are :mod:`vmkeep.disks.errors` (``DiskFormatError``, ``UnsafeDescriptorError``,
``ParentDiskRefused``; exit code 14).  Submodules are imported explicitly (``from
vmkeep.disks.vmdk.descriptor import parse_descriptor``): this file imports nothing, so reading
a descriptor never loads dissect or the stream codecs.
"""
