"""Parameter counts of the paper's main table (PAPER §2.8, §3.1), on full-size networks built on the meta device."""

from __future__ import annotations

import pytest
import torch

import loracli

# (model, preset, label_dim, cond, baseline, only LoRA, with LoRA); the last two rows are derived (PAPER §2.8).
ROWS = [
    ("iddpm", "cifar10", 0, "time-lora", 52_546_438, 47_591_440, 54_880_528),
    ("iddpm", "cifar10", 10, "time-lora+class-lora", 52_551_558, 48_513_040, 55_807_248),
    ("edm", "cifar10", 0, "uc-lora", 55_733_891, 53_411_675, 57_745_499),
    ("edm", "cifar10", 10, "uc-lora", 55_735_299, 53_413_083, 57_746_907),
    ("iddpm", "imagenet64", 0, "time-lora", 121_063_942, 113_602_960, 124_175_248),
    ("edm", "ffhq64", 0, "uc-lora", 61_805_571, 58_819_827, 63_941_619),
]


def count(model, cond, **kw) -> int:
    with torch.device("meta"):
        net = loracli.create_model(model, cond=cond, **kw)
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize("model,preset,label_dim,cond,baseline,only_lora,with_lora", ROWS,
                         ids=[f"{r[0]}-{r[1]}-{'cond' if r[2] else 'uncond'}" for r in ROWS])
def test_main_table_parameter_counts(model, preset, label_dim, cond, baseline, only_lora, with_lora):
    kw = dict(preset=preset, label_dim=label_dim)
    assert count(model, "none", **kw) == baseline
    assert count(model, cond, only_lora=True, **kw) == only_lora
    assert count(model, cond, **kw) == with_lora


def test_adapters_of_the_paper_split_off_as_condition_parameters():
    with torch.device("meta"):
        edm = loracli.create_model("edm", preset="cifar10", cond="uc-lora")
        iddpm = loracli.create_model("iddpm", preset="cifar10", cond="time-lora+class-lora", label_dim=10)
    assert sum(p.numel() for p in edm.condition_parameters()) == 2_011_608  # 12 layers; FORMATS §3.3
    assert sum(p.numel() for p in edm.base_parameters()) == 55_733_891
    assert sum(p.numel() for p in iddpm.condition_parameters()) == 2_334_090 + 921_600  # PAPER §3.1


def test_ffhq_preset_uses_twenty_bases_and_cli_style_overrides_win():
    with torch.device("meta"):
        ffhq = loracli.create_model("edm", preset="ffhq64", cond="uc-lora")
        custom = loracli.create_model("edm", preset="ffhq64", cond="uc-lora", bases=8, lora_rank=2, mlp=[64, 32])
    assert ffhq.config["cond_options"]["uc-lora"] == {"lora_rank": 4, "bases": 20, "mlp": [128, 64]}
    assert custom.config["cond_options"]["uc-lora"] == {"lora_rank": 2, "bases": 8, "mlp": [64, 32]}
