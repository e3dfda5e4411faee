"""Image generation shared by ``loracli sample``, ``loracli fid CKPT`` and training snapshots.

Image k depends on ``seeds[k]`` alone, as in NVlabs/edm's generate.py: every image has its own
``torch.Generator`` seeded with ``seed % 2**32``; it draws the latents ``randn([C, H, W])``, then (for a
class-conditional model) a class ``randint(label_dim)`` -- always, even when a class is given, as EDM does, so
that the stochastic sampler's noise, drawn next from the same generator, lines up -- and then all of the
sampler's fresh noise. Batch size, batch composition and the number of GPUs therefore change nothing.

Contract::

    sample(net, seeds, class_labels=None, steps=None, sampler=None, batch=64, device=None,
           precision=None, progress=False, **sampler_options) -> torch.Tensor   # uint8 [N, C, H, W], CPU
    generate(...same arguments...) -> Iterator[Batch]                           # streams batches instead

``class_labels``: None (a random class per seed for a conditional model), an int, a sequence of ints (one per
seed), a ``{class: weight}`` dict (a soft class vector, ClassLoRA interpolation; weights need not sum to 1), a
float vector ``[label_dim]`` or float vectors ``[N, label_dim]``. Samplers: ``heun``/``euler`` (edm family;
options ``sigma_min, sigma_max, rho, S_churn, S_min, S_max, S_noise``), ``ancestral``/``ddim`` (ddpm family;
option ``eta``). Defaults come from the network's preset (``config["sampling"]``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from loracli.diffusion import edm
from loracli.errors import UserError
from loracli.images import to_uint8
from loracli.runtime import autocast as runtime_autocast
from loracli.runtime import pick_device

FAMILY_SAMPLERS = {"edm": ("heun", "euler"), "ddpm": ("ancestral", "ddim")}
FAMILY_OPTIONS = {"edm": ("sigma_min", "sigma_max", "rho", "S_churn", "S_min", "S_max", "S_noise"), "ddpm": ("eta",)}
FLAGS = {key: key.lower().replace("_", "-") for key in FAMILY_OPTIONS["edm"] + FAMILY_OPTIONS["ddpm"]}
EDM_DEFAULT_STEPS = 18


# -- what to run -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SamplerChoice:
    """A sampler resolved from the preset's defaults and the caller's overrides."""

    name: str
    steps: int | None  # None: every timestep of a ddpm process
    options: Mapping[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"sampler": self.name, "steps": self.steps, **dict(self.options)}

    def evaluations(self, net: Any) -> int:
        """Network evaluations per image (NFE): 2N - 1 for Heun, N otherwise (all T for a full ddpm chain)."""
        if self.name in edm.SAMPLERS:
            return edm.nfe(self.name, int(self.steps))
        return int(self.steps or diffusion_config(net)["diffusion_steps"])


def _base(net: Any) -> Any:
    return getattr(net, "net", net)


def family_of(net: Any) -> str:
    family = getattr(net, "family", None)
    if family not in FAMILY_SAMPLERS:
        raise TypeError("loracli.sample expects a network built by loracli (create_model, load or convert)")
    return family


def label_dim_of(net: Any) -> int:
    return int(getattr(net, "label_dim", 0) or 0)


def image_shape(net: Any) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images the network makes."""
    base = _base(net)
    config = getattr(net, "config", {}).get("model_config", {})
    channels = getattr(base, "img_channels", config.get("img_channels", 3))
    resolution = getattr(base, "img_resolution", config.get("img_resolution"))
    if resolution is None:
        raise TypeError("the network declares no img_resolution")
    return int(channels), int(resolution), int(resolution)


def choose_sampler(net: Any, sampler: str | None = None, steps: int | None = None,
                   **options: Any) -> SamplerChoice:
    """The preset's sampling defaults (``config["sampling"]``) overridden by the non-None arguments."""
    family = family_of(net)
    defaults = dict(getattr(net, "config", {}).get("sampling", {}))
    preset_sampler = defaults.pop("sampler", None)
    name = sampler or preset_sampler or FAMILY_SAMPLERS[family][0]
    if name not in FAMILY_SAMPLERS[family]:
        raise UserError(f"Sampler '{name}' does not fit this {family}-family model; use one of: "
                        f"{', '.join(FAMILY_SAMPLERS[family])}.")
    preset_steps = defaults.pop("steps", None)
    steps = steps if steps is not None else preset_steps
    if steps is None and family == "edm":
        steps = EDM_DEFAULT_STEPS
    if steps is not None and int(steps) < 1:
        raise UserError(f"--steps must be at least 1 (got {steps}).")
    merged = {**defaults, **{k: v for k, v in options.items() if v is not None}}
    unknown = sorted(set(merged) - set(FAMILY_OPTIONS[family]))
    if unknown:
        raise UserError(f"Sampler option(s) {', '.join(unknown)} do not apply to a {family}-family model; "
                        f"it takes: {', '.join(FAMILY_OPTIONS[family])}.")
    if name == "ancestral" and merged.get("eta"):
        raise UserError("--eta sets DDIM's noise; it does not apply to the ancestral sampler (use --sampler ddim).")
    if name == "ddim":
        merged.setdefault("eta", 0.0)
    check_sampler_options(merged)
    return SamplerChoice(name, None if steps is None else int(steps), merged)


def check_sampler_options(options: Mapping[str, Any]) -> None:
    """Refuse values the samplers cannot use: they would give NaN or black images, not an error.

    DDIM's ``eta`` interpolates between deterministic DDIM (0) and the ancestral variance (1); outside
    [0, 1] the square root of its noise term goes negative. EDM's schedule needs
    ``0 < sigma_min < sigma_max`` and ``rho > 0``; churn and its noise cannot be negative.
    """
    def value(key: str) -> float | None:
        if options.get(key) is None:
            return None
        number = float(options[key])
        if not math.isfinite(number) and not (key == "S_max" and number == math.inf):
            raise UserError(f"--{FLAGS[key]} must be a finite number (got {options[key]}).")
        return number

    eta = value("eta")
    if eta is not None and not 0 <= eta <= 1:
        raise UserError(f"--eta must be between 0 (deterministic DDIM) and 1 (ancestral noise); got {eta:g}.")
    for key in ("sigma_min", "sigma_max", "rho"):
        if (v := value(key)) is not None and v <= 0:
            raise UserError(f"--{FLAGS[key]} must be positive (got {v:g}).")
    for key in ("S_churn", "S_noise", "S_min", "S_max"):
        if (v := value(key)) is not None and v < 0:
            raise UserError(f"--{FLAGS[key]} cannot be negative (got {v:g}).")
    low, high = value("sigma_min"), value("sigma_max")
    if low is not None and high is not None and low >= high:
        raise UserError(f"--sigma-min ({low:g}) must be below --sigma-max ({high:g}).")


# -- randomness and classes --------------------------------------------------------------------------------
class SeedGenerators:
    """One ``torch.Generator`` per image, seeded ``seed % 2**32`` (EDM's ``StackedRandomGenerator``)."""

    def __init__(self, seeds: Sequence[int], device: torch.device) -> None:
        self.device = device
        self.generators = [torch.Generator(device).manual_seed(int(s) % (1 << 32)) for s in seeds]

    def randn(self, shape: Sequence[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.stack([torch.randn(list(shape), generator=g, dtype=dtype, device=self.device)
                            for g in self.generators])

    def randn_like(self, x: torch.Tensor) -> torch.Tensor:
        return self.randn(x.shape[1:], dtype=x.dtype)

    def randint(self, high: int) -> torch.Tensor:
        return torch.stack([torch.randint(high, [], generator=g, device=self.device) for g in self.generators])


def class_table(class_labels: Any, label_dim: int, num: int) -> torch.Tensor | None:
    """Fixed class vectors ``[N, label_dim]`` or one shared ``[label_dim]``; None: random per seed.

    Raises a UserError for a class on an unconditional model, a class out of range, or a wrong length.
    """
    if class_labels is None:
        return None
    if not label_dim:
        raise UserError("This model is unconditional; it takes no class (leave out --class).")

    def check(k: int) -> int:
        if not 0 <= int(k) < label_dim:
            raise UserError(f"Class {k} is out of range; this model has classes 0..{label_dim - 1}.")
        return int(k)

    if isinstance(class_labels, Mapping):
        vector = torch.zeros(label_dim)
        for k, w in class_labels.items():
            vector[check(k)] += float(w)
        return vector
    if isinstance(class_labels, int):
        return torch.nn.functional.one_hot(torch.tensor(check(class_labels)), label_dim).float()
    labels = torch.as_tensor(class_labels)
    if labels.is_floating_point():
        if labels.shape not in ((label_dim,), (num, label_dim)):
            raise UserError(f"Class vectors must have shape [{label_dim}] or [{num}, {label_dim}], "
                            f"not {list(labels.shape)}.")
        return labels.float().cpu()
    labels = labels.reshape(-1)
    if labels.numel() not in (1, num):
        raise UserError(f"Give one class or one per seed ({num}), not {labels.numel()}.")
    for k in labels.unique().tolist():
        check(k)
    return torch.nn.functional.one_hot(labels.long(), label_dim).float().squeeze(0)


def labels_for_batch(table: torch.Tensor | None, drawn: torch.Tensor | None, rows: slice,
                     label_dim: int) -> torch.Tensor | None:
    """The class vectors of one batch: the fixed table's rows, else one-hot of the classes drawn per seed."""
    if not label_dim:
        return None
    if table is None:
        return torch.nn.functional.one_hot(drawn, label_dim).float()
    fixed = table if table.ndim == 1 else table[rows]
    return fixed.expand(rows.stop - rows.start, label_dim)


# -- devices and precision ---------------------------------------------------------------------------------
# -- progress ----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def progress_bar(total: int, description: str, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """A rich bar showing items done, items/s and the time left; ``advance(n)``. Silent when disabled."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
    from rich.text import Text

    class Speed(ProgressColumn):
        def render(self, task: Any) -> Text:
            return Text(f"{task.speed:.1f} img/s" if task.speed else "-- img/s")

    columns = [TextColumn(description), BarColumn(), MofNCompleteColumn(), Speed(), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)


# -- generation --------------------------------------------------------------------------------------------
@dataclass
class Batch:
    """One batch of generated images, in the order of its seeds."""

    seeds: list[int]
    images: torch.Tensor  # uint8 [n, C, H, W] on the CPU
    labels: torch.Tensor | None  # float class vectors [n, label_dim] on the CPU, None for unconditional models


class NonFiniteSamples(UserError):
    """Sampling gave NaN or infinite values: the checkpoint or the sampler settings are broken."""


class FiniteWatch:
    """Notes whether each network evaluation of a batch was finite, without waiting for the device, so that a
    batch ending in NaN (which would become black PNGs) stops with the step at which it went wrong."""

    def __init__(self, choice: SamplerChoice, num_steps: int) -> None:
        self.choice, self.num_steps = choice, num_steps
        self.flags: list[torch.Tensor] = []

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        self.flags.append(torch.isfinite(output).all())
        return output

    def check(self, x: torch.Tensor, seeds: Sequence[int]) -> None:
        """Raise NonFiniteSamples when the batch's result ``x`` is not finite; else forget the batch."""
        flags, self.flags = self.flags, []
        if bool(torch.isfinite(x).all()):
            return
        from loracli.seeds import format_int_list

        what = "NaN" if bool(torch.isnan(x).any()) else "infinite values"
        first = next((k for k, flag in enumerate(flags) if not bool(flag)), None)
        where = ("although every network output was finite (the sampler settings overflow)" if first is None else
                 f"at step {first // 2 + 1 if self.choice.name == 'heun' else first + 1} of {self.num_steps}")
        raise NonFiniteSamples(f"Sampling produced {what} {where} for seeds {format_int_list(seeds)}; the checkpoint "
                               "or the settings are broken, so no image was written.")


def _edm_runner(net: Any, choice: SamplerChoice, autocast: Callable, watch: FiniteWatch) -> Callable:
    base = _base(net)
    options = dict(choice.options)
    round_sigma = getattr(base, "round_sigma", None) or (lambda s: s)
    sigma_min = max(float(options.pop("sigma_min", 0.002)), float(getattr(base, "sigma_min", 0)))
    sigma_max = min(float(options.pop("sigma_max", 80.0)), float(getattr(base, "sigma_max", float("inf"))))
    rho = float(options.pop("rho", 7.0))
    solver = edm.SAMPLERS[choice.name]

    def run(latents: torch.Tensor, labels: torch.Tensor | None, rnd: SeedGenerators) -> torch.Tensor:
        sigmas = edm.noise_levels(choice.steps, sigma_min, sigma_max, rho, round_sigma, latents.device)

        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            with autocast():
                return watch(net(x, sigma, labels).to(torch.float64))

        return solver(denoise, latents, sigmas, randn_like=rnd.randn_like, round_sigma=round_sigma, **options)

    return run


def diffusion_config(net: Any) -> dict[str, Any]:
    """The model config with the process settings a preset left to the builder's defaults read off the network."""
    config = dict(getattr(net, "config", {}).get("model_config", {}))
    for key in ("diffusion_steps", "noise_schedule", "learn_sigma"):
        if key not in config and hasattr(_base(net), key):
            config[key] = getattr(_base(net), key)
    return config


def _ddpm_runner(net: Any, choice: SamplerChoice, autocast: Callable, watch: FiniteWatch) -> Callable:
    from loracli.diffusion.gaussian import GaussianDiffusion

    diffusion = GaussianDiffusion.from_model_config(diffusion_config(net), steps=choice.steps)
    eta = float(choice.options.get("eta", 0.0))

    def model(x: torch.Tensor, t: torch.Tensor, labels: Any) -> torch.Tensor:
        with autocast():
            return watch(net(x, t, labels).float())

    def run(latents: torch.Tensor, labels: torch.Tensor | None, rnd: SeedGenerators) -> torch.Tensor:
        return diffusion.sample(model, latents, labels, sampler=choice.name, eta=eta, randn_like=rnd.randn_like)

    return run


def generate(net: Any, seeds: Sequence[int], class_labels: Any = None, steps: int | None = None,
             sampler: str | None = None, batch: int = 64, device: str | torch.device | None = None,
             precision: str | None = None, progress: bool = False, **sampler_options: Any) -> Iterator[Batch]:
    """Generate images batch by batch (see the module docstring); the network is moved to ``device``."""
    seeds = [int(s) for s in seeds]
    if batch < 1:
        raise UserError(f"--batch must be at least 1 (got {batch}).")
    if any(s < 0 for s in seeds):
        raise UserError("Seeds must be non-negative.")
    device = pick_device(device)
    family, label_dim = family_of(net), label_dim_of(net)
    table = class_table(class_labels, label_dim, len(seeds))
    choice = choose_sampler(net, sampler, steps, **sampler_options)
    autocast = runtime_autocast(precision, device)
    watch = FiniteWatch(choice, choice.steps if family == "edm" else choice.evaluations(net))
    run = (_edm_runner if family == "edm" else _ddpm_runner)(net, choice, autocast, watch)
    shape = image_shape(net)

    was_training = net.training
    # On a GPU, channels_last (NHWC) is the tensor cores' own layout: convolutions skip their transposes and
    # the adapters take their accumulating matrix route. It changes no value.
    layout = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every batch has the same shapes: pick the fastest kernels once
    net.to(device, memory_format=layout).eval()
    try:
        with torch.no_grad(), progress_bar(len(seeds), "Sampling", progress) as advance:
            for start in range(0, len(seeds), batch):
                chunk = seeds[start:start + batch]
                rnd = SeedGenerators(chunk, device)
                latents = rnd.randn(shape).contiguous(memory_format=layout)
                drawn = rnd.randint(label_dim) if label_dim else None
                labels = labels_for_batch(table, drawn, slice(start, start + len(chunk)), label_dim)
                labels = None if labels is None else labels.to(device)
                x = run(latents, labels, rnd)
                watch.check(x, chunk)  # before any image of the batch leaves: NaN would become black PNGs
                images = to_uint8(x).cpu()
                yield Batch(chunk, images, None if labels is None else labels.cpu())
                advance(len(chunk))
    finally:
        net.train(was_training)


def sample(net: Any, seeds: Sequence[int], class_labels: Any = None, steps: int | None = None,
           sampler: str | None = None, batch: int = 64, device: str | torch.device | None = None,
           precision: str | None = None, progress: bool = False, **sampler_options: Any) -> torch.Tensor:
    """uint8 images ``[N, C, H, W]`` on the CPU, image k from ``seeds[k]`` alone, e.g.
    ``loracli.sample(net, seeds=range(8), class_labels=3, steps=18)``."""
    batches = list(generate(net, seeds, class_labels, steps, sampler, batch, device, precision, progress,
                            **sampler_options))
    if not batches:
        return torch.empty(0, *image_shape(net), dtype=torch.uint8)
    return torch.cat([b.images for b in batches])


# -- several processes (torchrun) --------------------------------------------------------------------------
def shard_indices(num: int, batch: int, rank: int, world: int) -> list[int]:
    """Positions (into the seed list) this rank generates, split as EDM's generate.py does: batches of at most
    ``batch``, dealt round-robin to the ranks."""
    if world == 1:
        return list(range(num))
    num_batches = ((num - 1) // (batch * world) + 1) * world if num else world
    batches = torch.tensor_split(torch.arange(num), num_batches)
    return [int(i) for b in batches[rank::world] for i in b.tolist()]
