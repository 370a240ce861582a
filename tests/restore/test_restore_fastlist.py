"""The fast ext listing gives exactly the generic listing's entries (names, sizes, modes, owners,
mtimes, links), including on a hostile file system; and walks what ``iter_entries`` walks."""

from __future__ import annotations

import pytest

from vmkeep.browse import fastlist
from vmkeep.browse.point import PointImage
from vmkeep.storage.repository import Repository


def by_name(entries):
    return sorted(entries, key=lambda e: e.name)


@pytest.mark.parametrize(("image", "volume"), [("gpt", "p1"), ("evil", "whole"), ("vmdk", "p1")])
def test_fast_listing_equals_generic(backed, image, volume):
    with PointImage.open(Repository.open(str(backed.repo)), f"{image}@latest") as img:
        fs = img.filesystem(volume)
        dirs = [e.path for e in fs.iter_entries("/") if e.type == "dir"] + ["/"]
        for d in dirs:
            assert by_name(fastlist.listdir(fs, d)) == by_name(fs.listdir(d)), d
        assert by_name(fastlist.iter_entries(fs)) == by_name(fs.iter_entries("/"))
        if image == "gpt":
            assert fastlist.listdir(fs, "/dirlink") == fs.listdir("/dirlink")  # followed
            assert fastlist.listdir(fs, "/hello.txt") is None  # not a directory


def test_other_file_systems_take_the_generic_path(backed):
    with PointImage.open(Repository.open(str(backed.repo)), "mbr@latest") as img:
        assert fastlist.listdir(img.filesystem("p1"), "/") is None
        fat = img.filesystem("p2")
        assert by_name(fastlist.iter_entries(fat)) == by_name(fat.iter_entries("/"))
