"""Moved: VMDK descriptors are :mod:`vmkeep.disks.vmdk.descriptor`, datastore paths
:mod:`vmkeep.vsphere.datastore_paths`.  This re-export serves h19-restores' ``jobs/restore_disk.py``
(written before the move); delete it once that imports ``vmkeep.vsphere.datastore_paths``."""

from vmkeep.vsphere.datastore_paths import split_datastore_path as split_datastore_path
