"""benchmarks/refcode.py finds the reference code only where the user says (a flag or an environment variable),
never at a guessed location, and says in one sentence what to set when it is missing or wrong."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REFCODE = Path(__file__).resolve().parent.parent / "benchmarks" / "refcode.py"


@pytest.fixture
def refcode(monkeypatch):
    monkeypatch.delenv("LORACLI_EDM_REF", raising=False)
    monkeypatch.delenv("LORACLI_IDDPM_REF", raising=False)
    spec = importlib.util.spec_from_file_location("refcode", REFCODE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_edm(root: Path) -> Path:
    (root / "training").mkdir(parents=True)
    (root / "training" / "networks.py").write_text("")
    return root


def test_no_default_location(refcode):
    assert refcode.edm_checkout() is None and refcode.iddpm_checkout() is None
    with pytest.raises(SystemExit, match="pass --reference PATH to a checkout .* or set LORACLI_EDM_REF=PATH"):
        refcode.edm_checkout(None, "--reference", required=True)


def test_flag_then_environment(refcode, tmp_path, monkeypatch):
    flag, env = fake_edm(tmp_path / "a"), fake_edm(tmp_path / "b")
    monkeypatch.setenv("LORACLI_EDM_REF", str(env))
    assert refcode.edm_checkout() == env.resolve()
    assert refcode.edm_checkout(flag) == flag.resolve()
    monkeypatch.setenv("LORACLI_EDM_REF", str(tmp_path))
    with pytest.raises(SystemExit, match=r"\(from \$LORACLI_EDM_REF\) is not a checkout of NVlabs/edm: it has no "
                                         "training/networks.py"):
        refcode.edm_checkout()
