"""Shared test setup: small thread counts, a fresh CLI app, and helpers to register fake plugins."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, int(os.environ.get("OMP_NUM_THREADS", "2")))))


@pytest.fixture
def cli():
    """Invoke ``loracli`` in-process: ``cli("models")`` -> click Result (exit_code, output)."""
    from typer.testing import CliRunner

    from loracli.cli.app import make_app

    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(make_app(), [str(a) for a in args], catch_exceptions=False)

    return invoke


@pytest.fixture
def fake_plugin(tmp_path, monkeypatch):
    """Install a throw-away distribution with entry points by writing a dist-info onto sys.path.

    ``fake_plugin(dist, {"loracli.models": {"name": "module:attr"}}, modules={"module": "source"})``
    """
    from loracli import registry

    def install(dist: str, groups: dict[str, dict[str, str]], modules: dict[str, str] | None = None,
                version: str = "9.9.9") -> Path:
        root = tmp_path / f"site-{dist}"
        info = root / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        lines = []
        for group, entries in groups.items():
            lines.append(f"[{group}]")
            lines += [f"{name} = {target}" for name, target in entries.items()]
        (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for name, source in (modules or {}).items():
            (root / f"{name}.py").write_text(textwrap.dedent(source))
        monkeypatch.syspath_prepend(str(root))
        registry.clear_cache()
        return root

    yield install
    registry.clear_cache()
