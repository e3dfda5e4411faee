"""What one training step minimises, per model family, with its randomness drawn once for the global batch.

``draw(n)`` makes every random number of a step for all ``n`` images of the global batch (noise levels or
timesteps, noise, augmentations); each process then computes ``loss(...)`` on its slice. So one process and
several take identical steps. ``loss`` returns one value per image, summed over pixels for the edm family
(EDM's ``loss.sum() / batch``) and averaged over pixels for the ddpm family (IDDPM's ``mean_flat``);
``display_scale`` turns it into the per-pixel loss that progress and metrics report.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch

from loracli.data.augment import AugmentPipe
from loracli.diffusion.losses import denoising_loss, draw_u

Draws = dict[str, torch.Tensor]


def take(draws: Mapping[str, torch.Tensor], start: int, stop: int) -> Draws:
    """The draws of images ``start .. stop - 1`` of the global batch."""
    return {k: v[start:stop] for k, v in draws.items()}


class EDMObjective:
    """An edm-family loss (EDM/VP/VE) with EDM's augmentation pipe in front of it."""

    def __init__(self, loss: Any, image_shape: tuple[int, int, int], augment: AugmentPipe | None = None) -> None:
        self.loss_fn, self.image_shape, self.augment = loss, image_shape, augment
        self.display_scale = 1.0 / (image_shape[0] * image_shape[1] * image_shape[2])

    def draw(self, n: int, generator: torch.Generator, device: torch.device) -> Draws:
        draws = {"u": draw_u(self.loss_fn, n, generator, device),
                 "noise": torch.randn([n, *self.image_shape], generator=generator, device=device)}
        if self.augment is not None:
            draws.update({f"augment.{k}": v for k, v in self.augment.draw(n, generator, device).items()})
        return draws

    def loss(self, net: Any, images: torch.Tensor, labels: Any, draws: Draws) -> torch.Tensor:
        augment_labels = None
        if self.augment is not None:
            params = {k.split(".", 1)[1]: v for k, v in draws.items() if k.startswith("augment.")}
            images, augment_labels = self.augment.apply(images, params)
        per_pixel = denoising_loss(self.loss_fn, net, images, draws["u"], draws["noise"], labels, augment_labels)
        return per_pixel.sum(dim=(1, 2, 3))


class DDPMObjective:
    """IDDPM's loss (hybrid with learned variances, else L_simple) at timesteps drawn uniformly."""

    display_scale = 1.0

    def __init__(self, diffusion: Any, image_shape: tuple[int, int, int]) -> None:
        self.diffusion, self.image_shape = diffusion, image_shape

    def draw(self, n: int, generator: torch.Generator, device: torch.device) -> Draws:
        return {"t": torch.randint(self.diffusion.num_timesteps, [n], generator=generator, device=device),
                "noise": torch.randn([n, *self.image_shape], generator=generator, device=device)}

    def loss(self, net: Any, images: torch.Tensor, labels: Any, draws: Draws) -> torch.Tensor:
        losses = self.diffusion.training_losses(net, images, draws["t"], class_labels=labels, noise=draws["noise"])
        return losses["loss"].to(torch.float32)
