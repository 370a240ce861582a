"""``vmkeep mount POINT DIR``: a read-only FUSE view of a restore point.

Layout of an image or VM point (see :mod:`vmkeep.disks.fusefs`): ``DIR/disks/disk<N>.raw`` —
each disk byte for byte; ``DIR/volumes/disk<N>-<volume>/…`` — each recognised volume as a
browsable tree (the names ``vmkeep ls`` shows).  A file point: its files at ``DIR`` itself, as
they were backed up (modes, owners, times, symbolic and hard links, extended attributes).
Reads fetch only the chunks they touch.  Blocks until unmounted: Ctrl-C
(or SIGTERM, SIGHUP, or ``fusermount3 -u DIR``) unmounts cleanly and exits 0.  A folder that is not
an empty directory exits 14; a mount FUSE cannot make (no ``/dev/fuse``, no libfuse, the kernel
refuses) exits 19, each with one line.  A folder that does not exist is created for the mount
and removed again (with the parents it created, while empty) once unmounted or refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, BinaryIO, cast

import typer

from vmkeep.cli.common import (
    RepoOpt,
    VerboseOpt,
    console_err,
    given_path,
    require_repo,
    setup_logging,
)
from vmkeep.cli.main import app
from vmkeep.cli.restore_opts import open_repo

if TYPE_CHECKING:
    from vmkeep.storage.file_manifest import FilePoint
    from vmkeep.storage.repository import Repository


@app.command("mount")
def mount_cmd(
    point: Annotated[str, typer.Argument(help="Restore point id, prefix, NAME@latest or latest.")],
    mountpoint: Annotated[
        Path, typer.Argument(parser=given_path,
                             help="Empty folder to mount on (created, and removed again).")
    ],
    repo: RepoOpt = "",
    verbose: VerboseOpt = 0,
) -> None:
    """Mount a restore point read-only: raw disks and browsable volumes, or a file point's
    files (Ctrl-C unmounts)."""
    from vmkeep.disks.errors import MountPointError
    from vmkeep.storage.disk_restore import repository_around, target_folder

    setup_logging(verbose)
    repo_url = require_repo(repo)
    if (root := repository_around(repo_url, str(mountpoint))) is not None:
        # its folders would be walked into the mount (check, prune, copy), and one made there
        # would be left among the repository's objects
        raise MountPointError(mountpoint, f"it lies inside the repository {root}: mount "
                                          "somewhere else")
    repository = open_repo(repo_url)
    if mountpoint.exists() or mountpoint.is_symlink():
        _mount(repository, point, mountpoint)  # check_mountpoint: an empty directory only
    else:
        with target_folder(str(mountpoint), remove_after=True):  # folders it made go again
            _mount(repository, point, mountpoint)
    console_err.print(f"unmounted {mountpoint}", markup=False)


def _mount(repository: Repository, point: str, mountpoint: Path) -> None:
    from vmkeep.browse.point import PointImage
    from vmkeep.disks.errors import FuseMountError
    from vmkeep.disks.fuse_session import check_mountpoint
    from vmkeep.storage.file_manifest import FilePoint, load_any_point

    check_mountpoint(str(mountpoint))
    try:
        from vmkeep.disks.fusefs import DiskTree, mount
    except OSError as exc:  # mfusepy found no libfuse
        raise FuseMountError(mountpoint, f"{exc} (install fuse3)") from None
    loaded = load_any_point(repository, point)
    if isinstance(loaded, FilePoint):
        _mount_files(repository, loaded, mountpoint)
        return
    img = PointImage(repository, loaded)

    try:
        tree = DiskTree([(f"disk{n}", cast(BinaryIO, img.reader(n))) for n in img.disk_numbers])
        for warning in tree.warnings:
            console_err.print(f"warning: {warning}", markup=False)
        console_err.print(
            f"mounted {img.point.short_id} ({img.point.name}) at {mountpoint}: "
            f"{len(tree.disks)} disk(s), {len(tree.volumes)} volume(s); Ctrl-C to unmount",
            markup=False,
        )
        mount(tree, mountpoint)
    finally:
        img.close()


def _mount_files(repository: Repository, point: FilePoint, mountpoint: Path) -> None:
    """A file point's files at ``mountpoint`` (a reader lease is taken with the index, on the
    first read)."""
    from vmkeep.disks.fusefs import RootTree, mount
    from vmkeep.guestfiles.tree import PointTree

    files = sum(1 for e in point.entries if e.type == "file")
    console_err.print(
        f"mounted {point.short_id} ({point.name}) at {mountpoint}: {files} file(s); "
        "Ctrl-C to unmount",
        markup=False,
    )
    mount(RootTree(PointTree(repository, point)), mountpoint)
