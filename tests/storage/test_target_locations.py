"""Repository locations a user mistypes get an error that names the mistake: a local path
through a file (every object failed with "Not a directory", named by its key), a URL without
its host or bucket (fsspec failed with a ``TypeError`` about ``host``), a port that is no
number."""

from __future__ import annotations

from pathlib import Path

import pytest

from vmkeep.errors import UsageError
from vmkeep.storage.backend import open_backend
from vmkeep.storage.errors import TargetUnreachable
from vmkeep.storage.repository import Repository


def test_a_local_repository_path_through_a_file_names_the_file(tmp_path: Path) -> None:
    file = tmp_path / "file"
    file.write_bytes(b"not a folder")
    for location in (file, file / "below"):
        with pytest.raises(TargetUnreachable, match=f"{file} is not a folder"):
            Repository.init(str(location))
    deeper = tmp_path / "new" / "deeper"  # folders that do not exist yet are made
    Repository.init(str(deeper))
    assert Repository.open(str(deeper)).point_ids() == []


def test_a_local_repository_folder_that_cannot_be_made_is_unreachable_not_damaged() -> None:
    """mkdir in /proc fails with ENOENT: that is a location vmkeep cannot write (exit 15),
    not an object missing from a damaged repository (exit 13), and names the location."""
    with pytest.raises(TargetUnreachable, match=r"\(/proc/vmkeep-nowhere/repo\): cannot create "
                       r"locks/[0-9a-f]+: No such file or directory") as err:
        Repository.init("/proc/vmkeep-nowhere/repo")
    assert err.value.exit_code == 15


@pytest.mark.parametrize(("url", "says"), [
    ("smb://", "names no host: write it smb://[USER@]HOST[:PORT]/SHARE/PATH"),
    ("smb://user@/share/x", "names no host"),
    ("sftp://:22/srv", "names no host: write it sftp://"),
    ("s3://", "names no bucket: write it s3://BUCKET/PATH"),
    ("s3:///path", "names no bucket"),
    ("sftp://backup01:ssh/srv", "does not parse"),
    ("sftp://backup01:99999/srv", "does not parse"),
    ("sftp://[::1/srv", "does not parse"),
])
def test_a_url_missing_its_host_or_bucket_is_a_usage_error(url: str, says: str) -> None:
    with pytest.raises(UsageError, match=says.replace("[", r"\[").replace("]", r"\]")) as err:
        open_backend(url)
    assert err.value.exit_code == 2
