"""Base diffusion networks. Each module exposes ``SPEC`` (a ``loracli.registry.ModelSpec``)."""
