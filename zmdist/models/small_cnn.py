"""A small CNN student that trains in minutes on a CPU (the embedded default's student)."""

from __future__ import annotations

import torch
import torch.nn as nn

from zmdist.models import register


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNN(nn.Module):
    """Three conv blocks (width w, 2w, 4w), global average pooling, a linear classifier ``fc``."""

    def __init__(self, num_classes: int, width: int = 32, in_chans: int = 3, dropout: float = 0.0):
        super().__init__()
        self.features = nn.Sequential(_block(in_chans, width), _block(width, 2 * width), _block(2 * width, 4 * width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.pool(self.features(x)).flatten(1)))


@register("cnn-small")
def cnn_small(num_classes: int, **kwargs) -> SmallCNN:
    return SmallCNN(num_classes, width=kwargs.pop("width", 32), **kwargs)


@register("cnn-tiny")
def cnn_tiny(num_classes: int, **kwargs) -> SmallCNN:
    return SmallCNN(num_classes, width=kwargs.pop("width", 8), **kwargs)
