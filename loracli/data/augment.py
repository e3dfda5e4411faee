"""EDM's geometric augmentation pipe (Karras et al. 2022, after ADA), with its augmentation labels.

Each augmentation is applied to an image with probability ``multiplier · p``; its parameter is then recorded
as a label (zero when not applied) that the network -- and UC-LoRA through the network's embedding -- is
conditioned on, so the model learns the augmented distribution without leaking it into samples. With EDM's
CIFAR-10 settings (xflip 1e8, yflip, scale, rotate_frac, aniso, translate_frac all 1) there are 9 labels:
``[xflip, yflip, scale, cos(rot) - 1, sin(rot), aniso·cos(a), aniso·sin(a), tx, ty]``.

Drawing the parameters (``draw``) is separate from applying them (``apply``) so that the training loop can draw
once for the global batch and every process applies its own slice: one GPU or many then see the same
augmentations. Geometric transforms run as in the reference: reflect-pad, 2x upsampling with the sym6 wavelet
low-pass, bilinear resampling, sym6 downsampling.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F

# sym6 wavelet low-pass filter (Daubechies symlet, 12 taps), the reference's anti-aliasing filter.
SYM6 = (0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
        0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
        -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148)

Params = dict[str, torch.Tensor]


def _matrices(rows: list[list[torch.Tensor | float]], like: torch.Tensor) -> torch.Tensor:
    """A batch of 3x3 matrices ``[N, 3, 3]`` from rows of per-sample tensors or constants."""
    return torch.stack([torch.stack([torch.as_tensor(e, dtype=like.dtype, device=like.device).expand_as(like)
                                     for e in row], dim=-1) for row in rows], dim=-2)


def translate(tx: torch.Tensor | float, ty: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    return _matrices([[1, 0, tx], [0, 1, ty], [0, 0, 1]], like)


def scale(sx: torch.Tensor | float, sy: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    return _matrices([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], like)


def rotate(theta: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    c, s = theta.cos(), theta.sin()
    return _matrices([[c, -s, 0], [s, c, 0], [0, 0, 1]], like)


@dataclass(frozen=True)
class AugmentPipe:
    """Probability multipliers (0 disables) and strengths; ``p`` scales every probability."""

    p: float = 1.0
    xflip: float = 0.0
    yflip: float = 0.0
    scale: float = 0.0
    rotate_frac: float = 0.0
    aniso: float = 0.0
    translate_frac: float = 0.0
    scale_std: float = 0.2            # log2 std of isotropic scaling
    rotate_frac_max: float = 1.0      # rotation range, 1 = full circle
    aniso_std: float = 0.2            # log2 std of anisotropic scaling
    aniso_rotate_prob: float = 0.5    # probability of scaling along a rotated axis
    translate_frac_std: float = 0.125  # std of translation, relative to the image size

    @classmethod
    def from_config(cls, config: dict) -> "AugmentPipe":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            from loracli.errors import UserError

            raise UserError(f"Unknown augmentation setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
        return cls(**{k: float(v) for k, v in config.items()})

    def to_config(self) -> dict:
        return asdict(self)

    @property
    def label_dim(self) -> int:
        """How many augmentation labels the pipe produces (9 with EDM's settings)."""
        return (self.xflip > 0) + (self.yflip > 0) + (self.scale > 0) + 2 * (self.rotate_frac > 0) \
            + 2 * (self.aniso > 0) + 2 * (self.translate_frac > 0)

    def draw(self, n: int, generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> Params:
        """Random parameters for ``n`` images, each a tensor with ``n`` rows (zero where not applied)."""
        def rand(*shape: int) -> torch.Tensor:
            return torch.rand(shape, generator=generator, device=device)

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(shape, generator=generator, device=device)

        def gate(value: torch.Tensor, multiplier: float) -> torch.Tensor:
            applied = rand(n).reshape(n, *[1] * (value.ndim - 1)) < multiplier * self.p
            return torch.where(applied, value, torch.zeros_like(value))

        params: Params = {}
        if self.xflip > 0:
            params["xflip"] = gate((rand(n) < 0.5).float(), self.xflip)
        if self.yflip > 0:
            params["yflip"] = gate((rand(n) < 0.5).float(), self.yflip)
        if self.scale > 0:
            params["scale"] = gate(randn(n), self.scale)
        if self.rotate_frac > 0:
            params["rotate"] = gate((rand(n) * 2 - 1) * (math.pi * self.rotate_frac_max), self.rotate_frac)
        if self.aniso > 0:
            params["aniso"] = gate(randn(n), self.aniso)
            angle = (rand(n) * 2 - 1) * math.pi
            params["aniso_angle"] = torch.where(rand(n) < self.aniso_rotate_prob, angle, torch.zeros_like(angle))
        if self.translate_frac > 0:
            params["translate"] = gate(randn(n, 2), self.translate_frac)
        return params

    def labels(self, params: Params) -> torch.Tensor:
        """The augmentation labels ``[N, label_dim]`` the network is conditioned on."""
        columns = []
        if "xflip" in params:
            columns.append(params["xflip"])
        if "yflip" in params:
            columns.append(params["yflip"])
        if "scale" in params:
            columns.append(params["scale"])
        if "rotate" in params:
            columns += [params["rotate"].cos() - 1, params["rotate"].sin()]
        if "aniso" in params:
            a, angle = params["aniso"], params["aniso_angle"]
            columns += [a * angle.cos(), a * angle.sin()]
        if "translate" in params:
            columns += [params["translate"][:, 0], params["translate"][:, 1]]
        return torch.stack([c.to(torch.float32) for c in columns], dim=1)

    def inverse_transform(self, params: Params, h: int, w: int, like: torch.Tensor) -> torch.Tensor | None:
        """The matrix mapping output pixel coordinates (centred) to input ones, or None for no warp."""
        g = None

        def then(m: torch.Tensor) -> None:
            nonlocal g
            g = m if g is None else g @ m

        if "scale" in params:
            s = torch.exp2(params["scale"] * self.scale_std)
            then(scale(1 / s, 1 / s, like))
        if "rotate" in params:
            then(rotate(params["rotate"], like))
        if "aniso" in params:
            s, angle = torch.exp2(params["aniso"] * self.aniso_std), params["aniso_angle"]
            then(rotate(-angle, like) @ scale(1 / s, s, like) @ rotate(angle, like))
        if "translate" in params:
            t = params["translate"]
            then(translate(-t[:, 0] * w * self.translate_frac_std, -t[:, 1] * h * self.translate_frac_std, like))
        return g

    def apply(self, images: torch.Tensor, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        """Augment float images ``[N, C, H, W]`` with drawn ``params``; returns (images, labels)."""
        n, _, h, w = images.shape
        if "xflip" in params:
            images = torch.where(params["xflip"].reshape(n, 1, 1, 1) > 0, images.flip(3), images)
        if "yflip" in params:
            images = torch.where(params["yflip"].reshape(n, 1, 1, 1) > 0, images.flip(2), images)
        like = torch.zeros(n, dtype=torch.float32, device=images.device)
        g_inv = self.inverse_transform(params, h, w, like)
        if g_inv is not None:
            images = warp(images, g_inv)
        return images, self.labels(params)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.apply(images, self.draw(images.shape[0], generator, images.device))


def _filter(taps: tuple[float, ...], channels: int, images: torch.Tensor, flip: bool) -> torch.Tensor:
    f = torch.tensor(taps[::-1] if flip else taps, dtype=images.dtype, device=images.device)
    return f.reshape(1, 1, -1).repeat(channels, 1, 1)


def warp(images: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
    """Resample ``images`` through the inverse transforms ``g_inv`` ``[N, 3, 3]`` (pixel units, centred)."""
    n, c, h, w = images.shape
    pad = len(SYM6) // 4
    cx, cy = (w - 1) / 2, (h - 1) / 2

    # Reflect-pad just enough that the transformed image corners (plus the filter support) stay inside.
    corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], dtype=g_inv.dtype,
                           device=g_inv.device).t()
    reach = (g_inv @ corners)[:, :2, :].permute(1, 0, 2).reshape(2, -1)  # [xy, N * 4]
    margin = torch.cat([-reach, reach]).amax(dim=1)  # x0, y0, x1, y1
    margin = margin + torch.tensor([pad * 2 - cx, pad * 2 - cy] * 2, dtype=margin.dtype, device=margin.device)
    limit = torch.tensor([w - 1, h - 1] * 2, dtype=margin.dtype, device=margin.device)
    mx0, my0, mx1, my1 = (int(v) for v in margin.clamp(min=0).minimum(limit).ceil().tolist())
    images = F.pad(images, [mx0, mx1, my0, my1], mode="reflect")
    g_inv = translate((mx0 - mx1) / 2, (my0 - my1) / 2, g_inv[:, 0, 0]) @ g_inv

    # 2x upsampling: zero-stuff, then low-pass along x and along y.
    ph, pw = images.shape[2:]
    up = _filter(SYM6, c, images, flip=True)
    k = (len(SYM6) + 1) // 2
    images = torch.stack([images, torch.zeros_like(images)], dim=4).reshape(n, c, ph, 2 * pw)[..., :-1]
    images = F.conv2d(images, up.unsqueeze(2), groups=c, padding=(0, k))
    images = torch.stack([images, torch.zeros_like(images)], dim=3).reshape(n, c, 2 * ph, -1)[:, :, :-1]
    images = F.conv2d(images, up.unsqueeze(3), groups=c, padding=(k, 0))
    like = g_inv[:, 0, 0]
    g_inv = scale(2, 2, like) @ g_inv @ scale(0.5, 0.5, like)
    g_inv = translate(-0.5, -0.5, like) @ g_inv @ translate(0.5, 0.5, like)

    # Bilinear resampling onto the (padded) 2x output grid, in affine_grid's [-1, 1] coordinates.
    out_h, out_w = (h + 2 * pad) * 2, (w + 2 * pad) * 2
    in_h, in_w = images.shape[2:]
    g_inv = scale(2 / in_w, 2 / in_h, like) @ g_inv @ scale(out_w / 2, out_h / 2, like)
    grid = F.affine_grid(g_inv[:, :2, :].to(images.dtype), [n, c, out_h, out_w], align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # 2x downsampling with the same low-pass, then crop the filter margin.
    down = _filter(SYM6, c, images, flip=False)
    k = (len(SYM6) - 1) // 2
    images = F.conv2d(images, down.unsqueeze(2), groups=c, stride=(1, 2), padding=(0, k))[:, :, :, pad:-pad]
    images = F.conv2d(images, down.unsqueeze(3), groups=c, stride=(2, 1), padding=(k, 0))[:, :, pad:-pad, :]
    return images
