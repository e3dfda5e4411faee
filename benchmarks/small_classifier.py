"""A small image classifier trained on the study's own data, whose features give a "classifier Fréchet distance".

Why: without the Inception weights (never downloaded), a sample-quality number still needs a feature space that
knows what the images look like. This CNN (five 3x3 convolutions, BatchNorm, two poolings, global average
pooling to 128 features) is trained on the same training images; the Fréchet distance between the feature
statistics of generated samples and of the training images is reported as the **classifier Fréchet distance
(CFD)**. It is *not* FID: the feature space is ours, small and trained on the data, so CFD values compare arms
of one study with each other and with the real-image floor of the same sample count, nothing else.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from loracli.images import from_uint8
from loracli.metrics.features import statistics
from loracli.metrics.fid import frechet_distance

FEATURES = 128


def _block(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


class SmallClassifier(nn.Module):
    """uint8 images ``[N, 3, H, W]`` (H, W divisible by 4) -> class logits; ``features`` gives the 128-d vector."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(*_block(3, 32), *_block(32, 32), nn.MaxPool2d(2),
                                  *_block(32, 64), *_block(64, 64), nn.MaxPool2d(2),
                                  *_block(64, FEATURES))
        self.head = nn.Linear(FEATURES, classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(from_uint8(images)).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def train_classifier(images: np.ndarray, labels: np.ndarray, epochs: int, seed: int = 0, batch: int = 256,
                     lr: float = 2e-3, device: str | torch.device = "cpu") -> SmallClassifier:
    """Adam with a cosine schedule and random horizontal flips, ``epochs`` passes over uint8 ``images``."""
    torch.manual_seed(seed)
    model = SmallClassifier(int(labels.max()) + 1).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    x_all, y_all = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
    steps = epochs * math.ceil(len(x_all) / batch)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1))))
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x_all), generator=generator)
        for start in range(0, len(order), batch):
            idx = order[start:start + batch]
            x, y = x_all[idx], y_all[idx]
            flip = torch.rand(len(x), generator=generator) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
            loss = F.cross_entropy(model(x.to(device)), y.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


@torch.no_grad()
def features(model: SmallClassifier, images: np.ndarray | torch.Tensor, batch: int = 1000) -> np.ndarray:
    """128-d features of uint8 images, ``[N, 128]`` float64."""
    device = next(model.parameters()).device
    images = torch.as_tensor(images)
    return np.concatenate([model.features(images[s:s + batch].to(device)).cpu().double().numpy()
                           for s in range(0, len(images), batch)])


@torch.no_grad()
def accuracy(model: SmallClassifier, images: np.ndarray, labels: np.ndarray, batch: int = 1000) -> float:
    device = next(model.parameters()).device
    x = torch.from_numpy(images)
    predictions = torch.cat([model(x[s:s + batch].to(device)).argmax(1).cpu() for s in range(0, len(x), batch)])
    return float((predictions.numpy() == labels).mean())


def cfd(sample_features: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> float:
    """Classifier Fréchet distance of samples' features against reference ``(mu, sigma)``."""
    mu, sigma = statistics(sample_features)
    return frechet_distance(mu, sigma, *reference)
