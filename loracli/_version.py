"""The package version, in a module of its own so that every layer can read it without importing the package face.

pyproject.toml reads it from here too (``[tool.setuptools.dynamic]``), so it is written down once.
"""

__version__ = "0.1.0"
