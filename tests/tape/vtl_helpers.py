"""Test helpers for tape: a tgt virtual tape library per test, configured as library "lab"."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from vmkeep.lab import vtl as vtl_mod
from vmkeep.tape.library import Library, LibraryConfig


def start_vtl(tmp_path: Path, size_mb: int = 64, **kw: int) -> vtl_mod.Vtl:
    missing = vtl_mod.missing_tools()
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"tape tests need {missing} (Debian package tgt)")
        pytest.skip(f"tape tests need {missing} (Debian package tgt)")
    return vtl_mod.start(tmp_path / "vtl", size_mb=size_mb, **kw)


def configure(v: vtl_mod.Vtl, name: str = "lab") -> Library:
    cfg = LibraryConfig(
        name, f"{v.url}/{v.changer_lun}", [f"{v.url}/{lun}" for lun in range(1, v.drives + 1)]
    )
    cfg.save()
    return Library(cfg)


@pytest.fixture
def tape_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "tapecfg"
    monkeypatch.setenv("VMKEEP_TAPE_DIR", str(d))
    return d


@pytest.fixture
def vtl(tmp_path: Path, tape_dir: Path) -> Iterator[vtl_mod.Vtl]:
    v = start_vtl(tmp_path)
    try:
        yield v
    finally:
        v.stop()


@pytest.fixture
def small_vtl(tmp_path: Path, tape_dir: Path) -> Iterator[vtl_mod.Vtl]:
    """Cartridges of 2 MB: a copy of a few MB spans two."""
    v = start_vtl(tmp_path, size_mb=2)
    try:
        yield v
    finally:
        v.stop()


@pytest.fixture
def library(vtl: vtl_mod.Vtl) -> Iterator[Library]:
    lib = configure(vtl)
    try:
        yield lib
    finally:
        lib.close()
