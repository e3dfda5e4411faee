"""EMA: EDM's half-life with ramp-up and IDDPM's fixed rate, against hand-computed decays."""

from __future__ import annotations

import pytest
import torch

from loracli.train.ema import EMA, edm_beta
from loracli.train.loop import learning_rate


def test_edm_beta_by_hand():
    # step 0: the ramp gives a zero half-life, so the average restarts from the weights (beta 0)
    assert edm_beta(0, 512, 500, 0.05) == 0.0
    # nimg 1e6: half-life min(500e3, 0.05 · 1e6) = 50e3 images -> 0.5^(512/50e3)
    assert edm_beta(1_000_000 // 512, 512, 500, 0.05) == pytest.approx(0.5 ** (512 / (0.05 * 1953 * 512)))
    # long after the ramp: the full 500 kimg half-life
    assert edm_beta(10 ** 6, 512, 500, 0.05) == pytest.approx(0.5 ** (512 / 500e3))
    assert edm_beta(0, 512, 500, None) == pytest.approx(0.5 ** (512 / 500e3))


def test_ema_update_moves_towards_the_weights():
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = EMA(model, batch=1, rate=0.9)
    with torch.no_grad():
        model.weight.fill_(2.0)
    ema.update(model, step=0)
    assert ema.model.weight[0].tolist() == pytest.approx([1.1, 1.1])  # 0.9 · 1 + 0.1 · 2
    assert not ema.model.weight.requires_grad and not ema.model.training
    edm = EMA(model, batch=512, halflife_kimg=500, rampup_ratio=0.05)
    with torch.no_grad():
        model.weight.fill_(3.0)
    edm.update(model, step=0)  # beta 0: a copy
    assert edm.model.weight.tolist() == [[3.0, 3.0]]


def test_learning_rate_warm_up_by_hand():
    train = {"lr": 1e-3, "batch": 512, "lr_rampup_kimg": 10000}
    assert learning_rate(train, 0) == 0.0  # EDM counts images before the step: the first step has lr 0
    assert learning_rate(train, 9765) == pytest.approx(1e-3 * 9765 * 512 / 10e6)
    assert learning_rate(train, 20000) == 1e-3
    assert learning_rate({"lr": 1e-4, "batch": 128, "lr_rampup_kimg": 0}, 0) == 1e-4
