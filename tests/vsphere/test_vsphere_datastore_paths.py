"""Datastore paths: ``[ds] dir/file``."""

from __future__ import annotations

import pytest

from vmkeep.vsphere.datastore_paths import join_datastore_path, split_datastore_path
from vmkeep.vsphere.errors import VSphereError


def test_split_datastore_path() -> None:
    assert split_datastore_path("[ds 1] vm/a b.vmdk") == ("ds 1", "vm/a b.vmdk")
    assert join_datastore_path("ds 1", "vm/a b.vmdk") == "[ds 1] vm/a b.vmdk"
    with pytest.raises(VSphereError):
        split_datastore_path("vm/disk.vmdk")
