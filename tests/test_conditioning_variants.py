"""TimeLoRA, ClassLoRA and UC-LoRA on nano: where ω comes from, options, parameter formulas (PAPER §2.3-2.8)."""

from __future__ import annotations

import copy

import pytest
import torch

import loracli
from loracli.build import add_conditions
from loracli.conditioning.composers import TimeTable, hat_weights
from loracli.conditioning.inject import lora_projections
from loracli.errors import UserError
from loracli.testing import TINY_NANO, example_inputs, perturb


def nano(cond="none", label_dim=0, only_lora=False, seed=0, **kw):
    torch.manual_seed(seed)
    return loracli.create_model("nano", cond=cond, label_dim=label_dim, only_lora=only_lora,
                                **{**TINY_NANO, **kw}).eval()


# -- TimeLoRA ---------------------------------------------------------------------------------------------
def test_hat_init_at_and_between_knots():
    w = hat_weights(4000, 11)  # knots every 400 steps
    assert w.shape == (4001, 11)
    assert torch.equal(w[0], torch.eye(11)[0]) and torch.equal(w[400], torch.eye(11)[1])
    assert torch.equal(w[4000], torch.eye(11)[10])
    assert w[600, 1] == 0.5 and w[600, 2] == 0.5 and w[600].count_nonzero() == 2
    assert w[100, 0] == 0.75 and w[100, 1] == 0.25
    assert w[3700, 9] == 0.75 and w[3700, 10] == 0.25  # knots 3600 and 4000
    torch.testing.assert_close(w.sum(1), torch.ones(4001, dtype=torch.float32))
    assert torch.equal(hat_weights(10, 1), torch.ones(11, 1))


def test_time_table_looks_up_rounded_clamped_timesteps():
    table = TimeTable(steps=8, bases=3)

    class Ctx:
        noise_level = torch.tensor([0, 2, 4, 7.6, 20, -3])

        def require(self, field):
            return getattr(self, field)

    omega = table(Ctx())
    expected = torch.tensor([[1, 0, 0], [0.5, 0.5, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, 0]])
    assert torch.equal(omega, expected)


def test_time_lora_layers_hold_their_own_tables():
    net = nano("time-lora", diffusion_steps=200, bases=5)
    tables = [m.adapters["time_lora"].omega.table for m in lora_projections(net).values()]
    assert len(tables) == 2 * len(net.attention_sites()) and len({id(t) for t in tables}) == len(tables)
    assert all(t.shape == (201, 5) and torch.equal(t, hat_weights(200, 5)) for t in tables)


def test_random_omega_init_is_not_the_hat_function():
    net = nano("time-lora", omega_init="random", bases=5)
    table = next(iter(lora_projections(net).values())).adapters["time_lora"].omega.table
    assert net.config["cond_options"]["time-lora"]["omega_init"] == "random"
    assert table.shape == (1001, 5) and (table < 0).any() and abs(table.std().item() - 1) < 0.05
    with pytest.raises(UserError, match="omega_init"):
        nano("time-lora", omega_init="cubic")


def test_time_lora_output_depends_on_the_timestep_through_the_adapters():
    net = nano("time-lora", only_lora=True)
    perturb(net.parameters())
    x = torch.randn(1, 3, 32, 32).expand(2, -1, -1, -1)
    with torch.no_grad():
        out = net(x, torch.tensor([10, 900]))
    assert not torch.allclose(out[0], out[1])  # the only-LoRA base has no time input of its own


# -- ClassLoRA --------------------------------------------------------------------------------------------
def class_net(only_lora=True):
    net = nano("class-lora", label_dim=3, only_lora=only_lora)
    perturb(net.parameters())
    return net


def test_class_lora_has_one_adapter_per_class_and_no_weights_of_its_own():
    net = nano("class-lora", label_dim=3)
    for layer in lora_projections(net).values():
        branch = layer.adapters["class_lora"]
        assert branch.bases == 3 and branch.bias is None and not list(branch.omega.parameters())


def test_only_lora_network_takes_the_class_through_lora():
    net = class_net(only_lora=True)
    x, t, _ = example_inputs(net, batch=1)
    with torch.no_grad():
        a, b = net(x, t, torch.tensor([0])), net(x, t, torch.tensor([2]))
    assert not torch.allclose(a, b)
    assert not any("map_label" in k for k in net.state_dict())


def test_class_interpolation_hits_the_pure_classes_and_lies_between():
    net = class_net()
    x, t, _ = example_inputs(net, batch=1)
    e_a, e_b = torch.eye(3)[[0]], torch.eye(3)[[2]]
    with torch.no_grad():
        y_a, y_b = net(x, t, e_a), net(x, t, e_b)
        mix = {lam: net(x, t, lam * e_a + (1 - lam) * e_b) for lam in (0.0, 0.5, 1.0, 1.5)}
    assert torch.equal(mix[1.0], y_a) and torch.equal(mix[0.0], y_b)
    gap = (y_a - y_b).norm()
    assert (mix[0.5] - y_a).norm() < gap and (mix[0.5] - y_b).norm() < gap
    assert (mix[1.5] - y_b).norm() > gap  # λ > 1 extrapolates beyond class a


def test_class_lora_update_is_linear_in_the_class_vector():
    net = class_net()
    layer = next(iter(lora_projections(net).values()))
    x = torch.randn(1, layer.in_features, 4, 4)
    e_a, e_b = torch.eye(3)[[0]], torch.eye(3)[[1]]

    def out(labels):
        net.context.class_labels = labels
        return layer(x)

    torch.testing.assert_close(out(0.5 * e_a + 0.5 * e_b), 0.5 * out(e_a) + 0.5 * out(e_b), rtol=1e-5, atol=1e-6)
    net.context.clear()


def test_class_lora_needs_a_class_conditional_model():
    with pytest.raises(UserError, match="label-dim"):
        nano("class-lora")


# -- UC-LoRA ----------------------------------------------------------------------------------------------
def test_uc_lora_mlp_layout_and_defaults():
    net = nano("uc-lora")
    assert net.config["cond_options"]["uc-lora"] == {"lora_rank": 4, "bases": 18, "mlp": [128, 64]}
    layer = next(iter(lora_projections(net).values()))
    mlp = layer.adapters["uc_lora"].omega.mlp
    e = net.embedding_channels()
    shapes = {k: tuple(v.shape) for k, v in mlp.state_dict().items()}
    assert shapes == {"0.0.weight": (128, e), "0.0.bias": (128,), "0.1.weight": (128,), "0.1.bias": (128,),
                      "1.0.weight": (64, 128), "1.0.bias": (64,), "1.1.weight": (64,), "1.1.bias": (64,),
                      "2.weight": (18, 64), "2.bias": (18,)}
    assert mlp[0][1].num_groups == 32 and mlp[1][1].num_groups == 16 and mlp[0][1].eps == 1e-5
    assert not mlp[0][0].bias.any() and not mlp[2].bias.any()
    assert abs(mlp[0][0].weight.std().item() - (1 / e) ** 0.5) < 0.1 * (1 / e) ** 0.5  # kaiming normal


def test_uc_lora_reads_the_embedding_the_base_network_computes():
    net = nano("uc-lora")
    seen = []
    layer = next(iter(lora_projections(net).values()))
    layer.adapters["uc_lora"].omega.register_forward_hook(lambda m, i, o: seen.append(i[0].embedding.clone()))
    x, t, _ = example_inputs(net)
    with torch.no_grad():
        net(x, t)
        expected = net.net.embed(t, None)
    assert torch.equal(seen[0], expected)


def test_uc_lora_refuses_a_network_without_embedding():
    with pytest.raises(UserError, match="embedding"):
        nano("uc-lora", only_lora=True)


@pytest.mark.parametrize("mlp,match", [("128,x", "hidden widths"), ([130], "GroupNorm groups"), ([], "at least")])
def test_uc_lora_mlp_option_is_checked(mlp, match):
    with pytest.raises(UserError, match=match):
        nano("uc-lora", mlp=mlp)


def test_string_mlp_option_is_accepted():
    net = nano("uc-lora", mlp="32,16", bases=5, lora_rank=2)
    layer = next(iter(lora_projections(net).values()))
    assert layer.adapters["uc_lora"].omega.mlp[1][0].weight.shape == (16, 32)
    assert layer.adapters["uc_lora"].down.shape[0] == 10


# -- every variant ----------------------------------------------------------------------------------------
def per_layer_formula(cond, d_in, d_out, r, m, steps=1000, e=128, w1=128, w2=64, classes=3):
    """PAPER §2.8, per adapted layer."""
    if cond == "time-lora":
        return m * r * (d_in + d_out) + (steps + 1) * m
    if cond == "class-lora":
        return classes * r * (d_in + d_out)
    return d_in * r * m + 2 * r * m * d_out + (e * w1 + 3 * w1) + (w1 * w2 + 3 * w2) + (w2 * m + m)


@pytest.mark.parametrize("cond", ["time-lora", "class-lora", "uc-lora"])
def test_added_parameters_follow_the_paper_formulas(cond):
    base, net = nano(label_dim=3), nano(cond, label_dim=3)
    m = {"time-lora": 11, "class-lora": 3, "uc-lora": 18}[cond]
    e = base.embedding_channels()
    expected = sum(per_layer_formula(cond, s.channels, 3 * s.channels, 4, m, e=e)
                   + per_layer_formula(cond, s.channels, s.channels, 4, m, e=e) for s in base.attention_sites())
    added = sum(p.numel() for p in net.condition_parameters())
    assert added == expected
    assert sum(p.numel() for p in net.parameters()) == sum(p.numel() for p in base.parameters()) + expected


def test_options_from_create_model_reach_every_layer():
    net = nano("time-lora+class-lora", label_dim=3, lora_rank=2, bases=7)
    assert net.config["cond_options"] == {"time-lora": {"lora_rank": 2, "bases": 7, "omega_init": "linear"},
                                          "class-lora": {"lora_rank": 2}}
    for layer in lora_projections(net).values():
        assert layer.adapters["time_lora"].down.shape[0] == 14 and layer.adapters["class_lora"].down.shape[0] == 6
    with pytest.raises(UserError, match="lora_rank"):
        nano("time-lora", lora_rank=0)


def test_adapters_cover_exactly_the_declared_projections():
    net = nano("time-lora")
    sites = net.attention_sites()
    assert sorted(lora_projections(net.net)) == sorted(n for s in sites for n in (s.qkv, s.proj))


def test_drop_in_on_a_loaded_network_keeps_its_outputs(tmp_path):
    base = nano(label_dim=3)
    perturb(base.parameters())
    loaded = loracli.load(loracli.save(base, tmp_path / "base.safetensors"))
    wrapped = add_conditions(loaded, "time-lora+class-lora")
    x, t, y = example_inputs(base)
    with torch.no_grad():
        assert torch.equal(wrapped(x, t, y), base(x, t, y))
    assert wrapped.config["cond"] == ["time-lora", "class-lora"]


@pytest.mark.slow
def test_conditioned_network_compiles_without_graph_breaks():
    net = nano("uc-lora+class-lora+time-lora", label_dim=3)
    perturb(net.parameters())
    x, t, y = example_inputs(net)
    compiled = torch.compile(copy.deepcopy(net), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, t, y), net(x, t, y))
