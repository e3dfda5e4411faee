"""adaLN-style conditioning of attention blocks, as a loracli plugin (entry point ``adaln``).

The alternative to LoRA conditioning that the paper's question invites: instead of condition-dependent
projection weights, modulate the attention block's activations from the network's conditioning embedding e
(as DiT's adaLN does for transformer blocks). Per attention block:

    norm(x)  ->  norm(x) · (1 + scale(e)) + shift(e)       (the normalisation before qkv)
    proj(a)  ->  proj(a) · (1 + gate(e))                    (the attention output, before the residual add)

scale, shift and gate come from small MLPs ``Linear(E→hidden) → SiLU → Linear(hidden→k·C)`` whose output
layer starts at zero. adaLN-Zero zero-initialises the gate itself, which switches the whole block off at
the start; a drop-in variant must instead leave the base network exactly as it is, so the gate enters as
``1 + gate`` and the wrapped network computes the base network bit for bit until training moves it.

The modules live in ``loracli_adaln.modulation``; this module holds only the entry point's ``SPEC``, so listing
plugins (``loracli models``) does not import torch.
"""

from __future__ import annotations

from typing import Any, Mapping

from loracli.registry import ConditionSpec

__all__ = ["SPEC"]


def _apply(model: Any, options: Mapping[str, Any]) -> None:
    from loracli_adaln.modulation import apply

    apply(model, options)


SPEC = ConditionSpec(
    name="adaln",
    apply=_apply,
    defaults={"adaln_hidden": 128},
    families=("edm", "ddpm"),
    needs=("embedding",),
    description="adaLN-style: embedding-driven scale/shift of the pre-attention norm and a gate on its output",
)
