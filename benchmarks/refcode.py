"""The reference implementations, imported from a checkout given on the command line (never copied here).

NVlabs/edm is looked for at ``--ref``, else ``.refs/edm`` (git-ignored; carried to a GPU machine), else
``/work/refs/NVlabs+edm``; openai/improved-diffusion likewise at ``.refs/improved-diffusion``. The reference
networks are built with the constructor arguments of a loracli config and get the same weights, so the two
sides of a comparison compute the same function.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from benchlib import REPO

EDM_CANDIDATES = (REPO / ".refs" / "edm", Path("/work/refs/NVlabs+edm"))
IDDPM_CANDIDATES = (REPO / ".refs" / "improved-diffusion", Path("/work/refs/openai+improved-diffusion"))


def find_checkout(given: str | Path | None, candidates: tuple[Path, ...], marker: str) -> Path | None:
    """``given`` if set (it must hold ``marker``), else the first candidate holding ``marker``, else None."""
    if given:
        path = Path(given).expanduser().resolve()
        if not (path / marker).exists():
            raise SystemExit(f"'{path}' does not look like the reference checkout (no {marker}).")
        return path
    return next((p for p in candidates if (p / marker).exists()), None)


def edm_checkout(given: str | Path | None = None) -> Path | None:
    return find_checkout(given, EDM_CANDIDATES, "training/networks.py")


def iddpm_checkout(given: str | Path | None = None) -> Path | None:
    return find_checkout(given, IDDPM_CANDIDATES, "improved_diffusion/unet.py")


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
