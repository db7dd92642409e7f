"""Reference models for 28x28 grayscale images (Fashion-MNIST)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from slimkit.models._registry import register_model

FMNIST_SHAPE = (1, 28, 28)


class BasicBlock(nn.Module):
    """ResNet basic block: two 3x3 conv+BN, identity or 1x1 projection shortcut, residual add."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet: a 3x3 stem, stages of basic blocks, global pooling, a linear head."""

    def __init__(
        self,
        widths: Sequence[int],
        blocks: Sequence[int],
        num_classes: int,
        in_ch: int,
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_ch, widths[0], 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, prev = [], widths[0]
        for i, (width, depth) in enumerate(zip(widths, blocks, strict=True)):
            layers = [BasicBlock(prev, width, stride=1 if i == 0 else 2)]
            layers += [BasicBlock(width, width) for _ in range(depth - 1)]
            stages.append(nn.Sequential(*layers))
            prev = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


# Reference trainings: what `slimkit train` runs, and what the accuracy bars were measured with.
RESNET_TRAINING = {"epochs": 9, "lr": 0.1, "label_smoothing": 0.1}
CNN_TRAINING = {"epochs": 8, "lr": 0.05}


@register_model(input_shape=FMNIST_SHAPE, num_classes=10, train_defaults=RESNET_TRAINING)
def fmnist_resnet(
    widths: Sequence[int] = (32, 64, 128),
    blocks: Sequence[int] = (1, 1, 1),
    stem_stride: int = 2,
    num_classes: int = 10,
) -> nn.Module:
    """A small ResNet (BatchNorm, residual adds, projection shortcuts) for 28x28 images."""
    # The stride-2 stem puts the blocks at 14, 7 and 4 pixels: a third of the training time of
    # full-resolution blocks on a 2-core CPU, for the same accuracy budget.
    return ResNet(widths, blocks, num_classes, in_ch=FMNIST_SHAPE[0], stem_stride=stem_stride)


@register_model(input_shape=FMNIST_SHAPE, num_classes=10, train_defaults=CNN_TRAINING)
def fmnist_cnn(
    channels: Sequence[int] = (32, 64),
    hidden: int = 1024,
    dropout: float = 0.4,
    num_classes: int = 10,
) -> nn.Module:
    """The Fashion-MNIST benchmark's convnet: two 5x5 conv+pool layers, a 1024-unit dense layer."""
    c1, c2 = channels
    return nn.Sequential(
        nn.Conv2d(FMNIST_SHAPE[0], c1, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * 7 * 7, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )  # fmt: skip


@register_model(input_shape=FMNIST_SHAPE, num_classes=10)
def fmnist_tiny(widths: Sequence[int] = (16, 32, 64), num_classes: int = 10) -> nn.Module:
    """A student of under 1/10 of fmnist_resnet's parameters: three conv+BN+ReLU stages."""
    layers: list[nn.Module] = []
    prev = FMNIST_SHAPE[0]
    for i, width in enumerate(widths):
        layers += [
            nn.Conv2d(prev, width, 3, stride=1 if i == 0 else 2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        ]
        prev = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(prev, num_classes)]
    return nn.Sequential(*layers)
