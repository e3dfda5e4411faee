"""Plugin discovery through entry points: built-ins, third-party plugins, broken and clashing ones."""

from __future__ import annotations

import pytest

from loracli import registry
from loracli.errors import UserError

TINY_MODEL = """
from loracli.models import nano
from loracli.registry import ModelSpec, Preset

SPEC = ModelSpec(
    name="tiny", family="ddpm", build=nano.NanoUNet,
    presets={"small": Preset(config={"model_channels": 8, "channel_mult": [1, 2], "attn_resolutions": [16]})},
    default_preset="small", attention_sites=nano.attention_sites, embedding_tap="emb_tap",
    description="a plugin-provided model",
)
"""

DOUBLING_CONDITION = """
from loracli.registry import ConditionSpec

def apply(model, options):
    model.applied_with = dict(options)

SPEC = ConditionSpec(name="marker", apply=apply, defaults={"strength": 2}, description="test marker")
"""


def test_builtins_are_registered_through_entry_points():
    models = registry.models()
    assert models["nano"].distribution == "loracli"
    assert registry.conditions()["none"].distribution == "loracli"
    assert registry.get_model("nano").family == "ddpm"


def test_plugin_model_and_condition_are_discovered_with_their_distribution(fake_plugin):
    fake_plugin("loracli-tiny", {"loracli.models": {"tiny": "tiny_model:SPEC"},
                                 "loracli.conditions": {"marker": "tiny_cond:SPEC"}},
                modules={"tiny_model": TINY_MODEL, "tiny_cond": DOUBLING_CONDITION})
    assert registry.models()["tiny"].distribution == "loracli-tiny"
    assert registry.models()["tiny"].version == "9.9.9"
    import loracli

    net = loracli.create_model("tiny", cond="marker", strength=5)
    assert net.applied_with == {"strength": 5}
    assert net.config["cond_options"] == {"marker": {"strength": 5}}
    assert net.config["model_config"]["model_channels"] == 8


def test_plugin_appears_in_models_command(fake_plugin, cli):
    fake_plugin("loracli-tiny", {"loracli.models": {"tiny": "tiny_model:SPEC"}}, modules={"tiny_model": TINY_MODEL})
    result = cli("models")
    assert result.exit_code == 0
    assert "tiny" in result.output and "loracli-tiny" in result.output


def test_broken_plugin_is_skipped_with_a_warning_naming_it(fake_plugin, cli):
    fake_plugin("loracli-broken", {"loracli.models": {"broken": "broken_mod:SPEC"}},
                modules={"broken_mod": "raise ImportError('missing dependency xyz')"})
    with pytest.warns(UserWarning, match="broken.*loracli-broken.*xyz"):
        found = registry.models()
    assert "broken" not in found and "nano" in found
    registry.clear_cache()
    result = cli("models")
    assert result.exit_code == 0 and "nano" in result.output


def test_plugin_of_the_wrong_kind_is_skipped(fake_plugin):
    fake_plugin("loracli-wrong", {"loracli.models": {"wrong": "wrong_mod:SPEC"}}, modules={"wrong_mod": "SPEC = 42"})
    with pytest.warns(UserWarning, match="not a ModelSpec"):
        assert "wrong" not in registry.models()


def test_two_plugins_with_the_same_name_are_refused_clearly(fake_plugin):
    fake_plugin("loracli-clash", {"loracli.models": {"nano": "tiny_model:SPEC"}}, modules={"tiny_model": TINY_MODEL})
    with pytest.raises(UserError, match="Two plugins register loracli.models 'nano'.*loracli-clash"):
        registry.models()


def test_unknown_names_list_the_known_ones():
    with pytest.raises(UserError, match="Unknown model 'nope'.*nano"):
        registry.get_model("nope")
    with pytest.raises(UserError, match="Unknown conditioning 'nope'.*none"):
        registry.get_condition("nope")
