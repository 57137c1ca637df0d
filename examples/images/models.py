"""The image example's own model: a small convolutional network, found by ``model.architecture: models:ShapeNet``
(this file lives in the project directory, which Loom puts on the path of its Ray Train workers and Serve
replicas). Loom passes ``input_shapes`` (each tensor input's per-row shape) and ``out_features`` (the number of
classes); ``model.options`` gives the rest."""

from __future__ import annotations

import torch
from torch import nn


class ShapeNet(nn.Module):
    def __init__(self, input_shapes: dict[str, list[int]], out_features: int, channels: int = 8):
        super().__init__()
        c, h, w = input_shapes["image"]
        self.features = nn.Sequential(
            nn.Conv2d(c, channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )
        self.head = nn.Linear(2 * channels * (h // 4) * (w // 4), out_features)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(image).flatten(1))
