"""The reference implementations, imported from a checkout the user names (never copied here, never guessed).

NVlabs/edm is read from the path given on the command line, else from ``$LORACLI_EDM_REF``;
openai/improved-diffusion from its flag, else ``$LORACLI_IDDPM_REF``. There is no default location. The
reference networks are built with the constructor arguments of a loracli config and get the same weights, so the
two sides of a comparison compute the same function.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

EDM = ("NVlabs/edm", "LORACLI_EDM_REF", "training/networks.py", "https://github.com/NVlabs/edm")
IDDPM = ("openai/improved-diffusion", "LORACLI_IDDPM_REF", "improved_diffusion/unet.py",
         "https://github.com/openai/improved-diffusion")


def find_checkout(given: str | Path | None, code: tuple[str, str, str, str], flag: str,
                  required: bool = False) -> Path | None:
    """The checkout ``given`` on the command line, else the one ``$<env>`` names; None when neither is set
    (or one sentence and exit 1 when ``required``). A path without the code's ``marker`` file is refused."""
    name, env, marker, url = code
    source = given or os.environ.get(env)
    if not source:
        if required:
            raise SystemExit(f"{name}'s code is needed here: pass {flag} PATH to a checkout (git clone {url}) or "
                             f"set {env}=PATH.")
        return None
    path = Path(source).expanduser().resolve()
    if not (path / marker).exists():
        origin = flag if given else f"${env}"
        raise SystemExit(f"'{path}' (from {origin}) is not a checkout of {name}: it has no {marker}.")
    return path


def edm_checkout(given: str | Path | None = None, flag: str = "--ref", required: bool = False) -> Path | None:
    return find_checkout(given, EDM, flag, required)


def iddpm_checkout(given: str | Path | None = None, flag: str = "--iddpm-ref", required: bool = False) -> Path | None:
    return find_checkout(given, IDDPM, flag, required)


def importable(path: Path) -> None:
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def edm_generate(path: Path) -> Any:
    """NVlabs/edm's generate.py as a module (for ``edm_sampler`` and ``StackedRandomGenerator``).

    Its command-line decorators need ``click``; where click is not installed a stand-in takes their place
    (the sampler itself never touches it).
    """
    importable(path)
    try:
        import click  # noqa: F401,PLC0415
    except ImportError:
        from unittest import mock

        sys.modules["click"] = mock.MagicMock()
    import generate  # noqa: PLC0415 -- the reference's generate.py

    return generate


def edm_kwargs(model: Any) -> dict[str, Any]:
    """The NVlabs/edm preconditioner kwargs of a loracli ``edm`` network (its full config minus our keys)."""
    from loracli.models.edm.config import full_config

    config = full_config(model.config["model_config"])
    if not config.pop("scale_shift", True):
        raise ValueError("the reference has no only-LoRA (scale_shift=False) network")
    return config


def edm_network(path: Path, model: Any, use_fp16: bool = False) -> Any:
    """NVlabs/edm's own network with the architecture and weights of the loracli baseline ``model``."""
    importable(path)
    from training import networks  # noqa: PLC0415 -- the reference, from the given checkout

    kwargs = edm_kwargs(model)
    classes = {"edm": "EDMPrecond", "vp": "VPPrecond", "ve": "VEPrecond", "iddpm": "iDDPMPrecond"}
    precond = classes[kwargs.pop("precond")]
    kwargs["use_fp16"] = use_fp16
    ref = getattr(networks, precond)(**kwargs)
    ref.load_state_dict(model.net.state_dict(), strict=True)
    return ref


def iddpm_network(path: Path, model: Any) -> Any:
    """improved-diffusion's UNetModel with the architecture and weights of the loracli ``iddpm`` ``model``."""
    importable(path)
    from improved_diffusion.unet import UNetModel  # noqa: PLC0415

    c = model.config["model_config"]
    heads_up = c.get("num_heads_upsample")
    ref = UNetModel(in_channels=c["img_channels"], model_channels=c["model_channels"],
                    out_channels=c["img_channels"] * (2 if c["learn_sigma"] else 1),
                    num_res_blocks=c["num_res_blocks"],
                    attention_resolutions=tuple(c["img_resolution"] // r for r in c["attn_resolutions"]),
                    dropout=c["dropout"], channel_mult=tuple(c["channel_mult"]),
                    num_classes=c["label_dim"] or None, num_heads=c["num_heads"],
                    num_heads_upsample=-1 if heads_up is None else heads_up,
                    use_scale_shift_norm=c["use_scale_shift_norm"])
    ref.load_state_dict(model.net.state_dict(), strict=True)  # same keys; our label_emb is nn.Embedding's matrix
    return ref
