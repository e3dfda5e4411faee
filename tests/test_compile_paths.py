"""torch.compile traces the GPU training path of EDM + UC-LoRA as one graph, forward and backward.

The path is the one ``loracli train --compile`` takes on a GPU: channels_last activations (the adapters'
in-place accumulating matrix route), class labels as one-hot vectors (what the Trainer passes), and autograd
through the functionalised graph (``aot_eager``: the same tracing as inductor, without generating code).
"""

from __future__ import annotations

import copy

import pytest
import torch

import loracli
from loracli.conditioning.inject import lora_projections
from loracli.testing import example_inputs


@pytest.mark.slow
def test_edm_uc_lora_channels_last_compiles_to_one_graph_with_the_same_gradients():
    torch.manual_seed(0)
    net = loracli.create_model("edm", preset="cifar10", cond="uc-lora", label_dim=10, model_channels=16,
                               channel_mult=[1, 2], num_blocks=1, dropout=0.0, img_resolution=16)
    with torch.no_grad():  # non-zero adapters, so the update is exercised
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    assert lora_projections(net.net)
    net = net.to(memory_format=torch.channels_last)
    x, sigma, _ = example_inputs(net, batch=2)
    x = x.contiguous(memory_format=torch.channels_last)
    labels = torch.nn.functional.one_hot(torch.tensor([1, 7]), 10).float()
    twin = copy.deepcopy(net)
    compiled = torch.compile(twin, fullgraph=True, backend="aot_eager")
    out_compiled, out = compiled(x, sigma, labels), net(x, sigma, labels)
    torch.testing.assert_close(out_compiled, out)
    out_compiled.square().sum().backward()
    out.square().sum().backward()
    for (name, p), q in zip(net.named_parameters(), twin.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
