"""Base diffusion networks. Each declares a ``loracli.registry.ModelSpec`` in a torch-free module (``specs.py``;
``edm/__init__.py`` for the edm package) that the entry points name; each network module re-exports it as ``SPEC``."""
