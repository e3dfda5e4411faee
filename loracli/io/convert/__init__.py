"""Converting foreign checkpoints into loracli checkpoints.

Each foreign format is one module with ``detect(path) -> bool`` and ``read(path, **options) ->
ForeignCheckpoint``; :func:`convert` picks the format, builds the loracli network the file describes, loads
its tensors strictly, optionally wraps it with more conditioning, and saves. No code from a file is executed.
"""

from loracli.io.convert.base import ForeignCheckpoint, convert, convert_model, read_any

__all__ = ["ForeignCheckpoint", "convert", "convert_model", "read_any"]
