"""Output folders: one that cannot be used is refused in one sentence, before any work and at every write.

A run folder (or a sample folder) is checked before the expensive part starts -- a path that is a file, or
whose nearest existing parent is a file or not writable, would otherwise fail minutes later with an OSError
traceback -- and the writes themselves turn an OSError (a full disk, a folder removed meanwhile) into a
sentence naming the folder.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from loracli.errors import UserError


def check_output_folder(path: Path | str, flag: str = "--outdir") -> None:
    """Refuse ``path`` as an output folder if it is a file or cannot be created or written; creates nothing."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"'{path}' is a file, not a folder; pick another {flag}.")
    existing = path.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"'{path}' cannot be created because '{existing}' is a file; pick another {flag}.")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"'{path}' cannot be written (no permission in '{existing}'); pick another {flag}.")


@contextlib.contextmanager
def writing_to(folder: Path | str) -> Iterator[None]:
    """Turn an OSError raised while writing into ``folder`` into one sentence (exit code 2, no traceback)."""
    try:
        yield
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise UserError(f"Cannot write to '{folder}' ({why}); free some space or pick another --outdir.") from None
