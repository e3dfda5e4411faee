"""Atomic file writes: write beside the target, then rename, so a crash never leaves a half-written file.

A write that is killed (SIGKILL, power loss) leaves its temporary file ``.<name>.<pid>-<random>.tmp`` behind;
the next write of the same target removes such leftovers of processes that are gone, and
:func:`remove_stale_temps` clears a whole folder (``train --resume`` does it for its run folder). Nothing
loracli reads ever matches a temporary name: they start with a dot and end in ``.tmp``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from pathlib import Path
from typing import Iterator

_UNKNOWN_OWNER_AGE_S = 3600  # a temp file without a readable pid is stale once untouched this long


def _owner_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists but belongs to someone else
        return True
    return True


def remove_stale_temps(folder: str | os.PathLike, name: str = "*") -> list[Path]:
    """Delete ``.<name>.*.tmp`` files in ``folder`` whose writing process is gone; returns what was removed."""
    removed = []
    for tmp in Path(folder).glob(f".{name}.*.tmp"):
        owner = tmp.name[: -len(".tmp")].rsplit(".", 1)[-1].split("-", 1)[0]
        try:
            stale = (not _owner_alive(int(owner)) if owner.isdigit()
                     else time.time() - tmp.stat().st_mtime > _UNKNOWN_OWNER_AGE_S)
            if stale and tmp.is_file():
                tmp.unlink()
                removed.append(tmp)
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path in the target's folder; on success it replaces ``path`` in one rename.

    On any exception the temporary file is removed and ``path`` keeps its old content. The file gets the
    mode a plain ``open()`` would give it, set after the caller wrote it (writers such as safetensors'
    replace the temporary file, which would otherwise keep ``mkstemp``'s 0600).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent, glob_escape(target.name))
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.{os.getpid()}-", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        with open(tmp_path, "rb") as f:  # make the bytes durable before the rename makes them visible
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def glob_escape(name: str) -> str:
    """``name`` with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))
