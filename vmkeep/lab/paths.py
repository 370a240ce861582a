"""Where the lab keeps things.

* state dir (``$VMKEEP_LAB_DIR`` or ``~/.cache/vmkeep/lab``): one running lab — spec, ready
  document, certificate, pid, log and the datastores;
* cache dir (``$VMKEEP_LAB_CACHE`` or ``~/.cache/vmkeep/lab-cache``): disk images keyed by content,
  shared by every lab;
* build dir (``.build`` beside the sources when writable, else the cache dir): the Go binary,
  keyed by a hash of the Go sources.
"""

from __future__ import annotations

import os
from pathlib import Path

from vmkeep.settings import settings

SOURCE_DIR = Path(__file__).resolve().parent / "esxsim"


def state_dir() -> Path:
    env = settings().lab_dir
    return Path(env) if env else Path.home() / ".cache" / "vmkeep" / "lab"


def cache_dir() -> Path:
    env = settings().lab_cache
    return Path(env) if env else Path.home() / ".cache" / "vmkeep" / "lab-cache"


def build_dir() -> Path:
    local = Path(__file__).resolve().parent / ".build"
    try:
        local.mkdir(parents=True, exist_ok=True)
        if os.access(local, os.W_OK):
            return local
    except OSError:
        pass
    return cache_dir() / "build"
