"""Where loracli keeps files it makes once and reuses: FID reference statistics, Inception weights."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$LORACLI_CACHE``, else ``$XDG_CACHE_HOME/loracli``, else ``~/.cache/loracli``."""
    if os.environ.get("LORACLI_CACHE"):
        return Path(os.environ["LORACLI_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "loracli"


def refs_dir() -> Path:
    """Reference statistics: ``<cache>/fid-refs``."""
    return cache_dir() / "fid-refs"
