"""The ``edm`` builder config: one flat JSON-able dict, and its mapping from NVlabs/edm constructor arguments.

The keys are the reference constructors' own keyword arguments (preconditioner and U-Net together, as
``train.py`` passes them), plus ``precond`` (``edm``, ``vp``, ``ve``, ``iddpm``), the shorthand ``arch``
(``ddpmpp``, ``ncsnpp``, ``adm``: ``train.py --arch``, explicit keys win) and ``scale_shift``. So a snapshot's
``_init_kwargs`` carry over key for key, and absent keys take the same defaults as in the reference.
"""

from __future__ import annotations

import inspect
import math
from typing import Any, Mapping, Sequence

from loracli.errors import UserError
from loracli.models.edm.precond import NETWORKS, PRECONDS

# train.py --arch: the network settings each choice implies.
ARCHS: dict[str, dict[str, Any]] = {
    "ddpmpp": dict(model_type="SongUNet", embedding_type="positional", encoder_type="standard",
                   decoder_type="standard", channel_mult_noise=1, resample_filter=[1, 1], model_channels=128,
                   channel_mult=[2, 2, 2]),
    "ncsnpp": dict(model_type="SongUNet", embedding_type="fourier", encoder_type="residual",
                   decoder_type="standard", channel_mult_noise=2, resample_filter=[1, 3, 3, 1], model_channels=128,
                   channel_mult=[2, 2, 2]),
    "adm": dict(model_type="DhariwalUNet", model_channels=192, channel_mult=[1, 2, 3, 4]),
}
# Arguments the preconditioner passes to the network itself rather than taking from the config.
_PASSED_BY_PRECOND = ("self", "img_resolution", "in_channels", "out_channels", "label_dim")
# The reference's preconditioners take these first four positionally (``_init_args``).
_POSITIONAL = ("img_resolution", "img_channels", "label_dim", "use_fp16")


def plain(value: Any) -> Any:
    """``value`` as JSON-able Python data: numpy scalars to numbers, tuples to lists, recursively."""
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", None) == 0:
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    return value


def expand_arch(config: Mapping[str, Any]) -> dict[str, Any]:
    """``config`` with the ``arch`` shorthand replaced by the settings it implies (explicit keys win)."""
    config = dict(config)
    arch = config.pop("arch", None)
    if arch is None:
        return config
    if arch not in ARCHS:
        raise UserError(f"Unknown EDM arch '{arch}'; choose one of {', '.join(ARCHS)}.")
    implied = ARCHS[arch]
    if config.get("model_type", implied["model_type"]) != implied["model_type"]:
        raise UserError(f"arch '{arch}' is a {implied['model_type']}, but model_type says {config['model_type']}.")
    return {**implied, **config}


def _parameters(fn: Any, skip: Sequence[str]) -> dict[str, inspect.Parameter]:
    return {name: p for name, p in inspect.signature(fn).parameters.items()
            if name not in skip and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def _precond_class(name: str) -> type:
    if name not in PRECONDS:
        raise UserError(f"Unknown EDM preconditioner '{name}'; choose one of {', '.join(PRECONDS)}.")
    return PRECONDS[name]


def full_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """Every constructor argument explicit: ``arch`` expanded, absent keys filled with the defaults.

    An unbounded default (EDMPrecond's ``sigma_max = inf``) stays implicit, so the config remains plain JSON.
    """
    config = expand_arch(config)
    precond = config.pop("precond", "edm")
    precond_params = _parameters(_precond_class(precond).__init__, ("self",))
    model_type = config.get("model_type", precond_params["model_type"].default)
    if model_type not in NETWORKS:
        raise UserError(f"Unknown EDM model_type '{model_type}'; choose one of {', '.join(NETWORKS)}.")
    params = {**precond_params, **_parameters(NETWORKS[model_type].__init__, _PASSED_BY_PRECOND)}
    unknown = sorted(set(config) - set(params))
    if unknown:
        raise UserError(f"EDM {model_type} with '{precond}' preconditioning has no setting {', '.join(unknown)}.")
    full: dict[str, Any] = {"precond": precond}
    for name, p in params.items():
        if name in config:
            full[name] = plain(config[name])
        elif p.default is p.empty:
            raise UserError(f"The EDM config needs '{name}'.")
        elif not (isinstance(p.default, float) and not math.isfinite(p.default)):
            full[name] = plain(p.default)
    return full


def from_reference(precond_class: str, init_args: Sequence[Any], init_kwargs: Mapping[str, Any],
                   network_class: str) -> dict[str, Any]:
    """The config of an NVlabs/edm network from its recorded classes and constructor arguments."""
    names = {cls.__name__: name for name, cls in PRECONDS.items()}
    if precond_class not in names:
        raise UserError(f"'{precond_class}' is not an NVlabs/edm preconditioner ({', '.join(names)}).")
    if len(init_args) > len(_POSITIONAL):
        raise UserError(f"{precond_class} was built with {len(init_args)} positional arguments; expected at most 4.")
    kwargs = {**dict(zip(_POSITIONAL, init_args)), **dict(init_kwargs)}
    if kwargs.get("model_type", network_class) != network_class:
        raise UserError(f"{precond_class} records model_type {kwargs['model_type']} but holds a {network_class}.")
    return full_config({"precond": names[precond_class], **kwargs, "model_type": network_class})


def build(precond: str = "edm", **config: Any) -> Any:
    """The preconditioned network a config describes (``ModelSpec.build``)."""
    kwargs = full_config({"precond": precond, **config})
    return PRECONDS[kwargs.pop("precond")](**kwargs)
