"""Architectures found by search, rebuilt from plain JSON: ``fmnist_searched(arch=...)``.

An architecture is data (a stem width and stages of blocks, each block one of four types), so a
searched model is saved, loaded, pruned, quantized and compiled like any other registered model.
:mod:`slimkit.search` samples these architectures and its supernet exports its sub-networks as
this model with their inherited weights (the module names below are shared with it).

Block types (``k`` the kernel, ``e`` the expansion ratio):

- ``plain``: conv k x k, BN, ReLU.
- ``residual``: the ResNet basic block, two k x k conv+BN with an identity or 1x1 projection
  shortcut (always on; ``skip`` is ignored).
- ``dwsep``: depthwise k x k conv+BN+ReLU, then pointwise 1x1 conv+BN+ReLU (MobileNet v1).
- ``mbconv``: inverted residual, 1x1 expansion to ``e`` times the input channels (omitted when
  ``e`` is 1), depthwise k x k, linear 1x1 projection (MobileNet v2).

``skip`` adds the block's input to its output (stride 1 and equal widths only).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import torch
from pydantic import Field, ValidationError, field_validator
from torch import Tensor, nn

from slimkit.config import Config, format_validation_error
from slimkit.errors import ConfigError
from slimkit.models._fmnist import FMNIST_SHAPE
from slimkit.models._registry import register_model

__all__ = [
    "BLOCK_TYPES",
    "SEARCHED_TRAINING",
    "BlockArch",
    "FmnistArch",
    "SearchedNet",
    "StageArch",
    "build_block",
    "fmnist_searched",
]

BLOCK_TYPES = ("plain", "residual", "dwsep", "mbconv")
"""The block types an architecture may use."""

# The reference training of a searched architecture: the epoch budget of fmnist_cnn's reference
# training (6 epochs), with the settings of the BatchNorm models (fmnist_resnet).
SEARCHED_TRAINING = {"epochs": 6, "lr": 0.1, "label_smoothing": 0.1, "augment": False}

BlockType = Literal["plain", "residual", "dwsep", "mbconv"]


class BlockArch(Config):
    """One block: its type, kernel size, expansion ratio (``mbconv`` only) and skip connection."""

    type: BlockType
    kernel: int = Field(default=3, ge=1)
    expand: int = Field(default=1, ge=1)
    skip: bool = False

    @field_validator("kernel")
    @classmethod
    def _odd(cls, kernel: int) -> int:
        if kernel % 2 == 0:
            raise ValueError(f"kernel sizes must be odd (same padding), got {kernel}")
        return kernel


class StageArch(Config):
    """A stage: its output width, the stride of its first block, and its blocks."""

    width: int = Field(ge=1)
    stride: int = Field(default=2, ge=1, le=2)
    blocks: tuple[BlockArch, ...] = Field(min_length=1)


class FmnistArch(Config):
    """A whole architecture: a 3x3 conv stem, stages, global pooling and a linear classifier.

    Example:
        >>> arch = FmnistArch.parse({"stem": 8, "stages": [
        ...     {"width": 16, "blocks": [{"type": "mbconv", "kernel": 5, "expand": 3}]}]})
        >>> arch.stages[0].blocks[0].expand
        3
    """

    stem: int = Field(default=16, ge=1)
    stages: tuple[StageArch, ...] = Field(min_length=1)

    @classmethod
    def parse(cls, data: dict[str, Any] | FmnistArch | None) -> FmnistArch:
        """Validate a JSON-like architecture, naming the offending field on error."""
        if isinstance(data, FmnistArch):
            return data
        try:
            arch = cls.model_validate(data or {})
        except ValidationError as exc:
            raise ConfigError(format_validation_error(exc, "architecture")) from None
        arch.check_skips()
        return arch

    def check_skips(self) -> None:
        """Refuse a skip connection where the block's input and output shapes differ."""
        prev = self.stem
        for s, stage in enumerate(self.stages):
            for b, block in enumerate(stage.blocks):
                stride = stage.stride if b == 0 else 1
                if block.skip and block.type != "residual" and (stride != 1 or prev != stage.width):
                    raise ConfigError(
                        f"architecture: stage {s} block {b} has skip=true but its input "
                        f"({prev} channels, stride {stride}) does not match its output "
                        f"({stage.width} channels): set skip to false."
                    )
                prev = stage.width

    def to_json(self) -> dict[str, Any]:
        """The architecture as plain JSON data (what ``fmnist_searched(arch=...)`` takes)."""
        return self.model_dump(mode="json")


DEFAULT_ARCH: dict[str, Any] = {
    "stem": 16,
    "stages": [
        {"width": w, "stride": 2, "blocks": [{"type": "residual", "kernel": 3}]}
        for w in (32, 64, 128)
    ],
}


class ConvBN(nn.Sequential):
    """Conv (no bias), BatchNorm and optionally ReLU, as children ``conv``, ``bn``, ``act``."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, *,
        groups: int = 1, act: bool = True,
    ) -> None:  # fmt: skip
        layers: OrderedDict[str, nn.Module] = OrderedDict(
            conv=nn.Conv2d(in_ch, out_ch, kernel, stride, kernel // 2, groups=groups, bias=False),
            bn=nn.BatchNorm2d(out_ch),
        )
        if act:
            layers["act"] = nn.ReLU(inplace=True)
        super().__init__(layers)


class PlainBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel: int, skip: bool) -> None:
        super().__init__()
        self.conv = ConvBN(in_ch, out_ch, kernel, stride)
        self.skip = skip

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return out + x if self.skip else out


class ResidualBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = ConvBN(in_ch, out_ch, kernel, stride)
        self.conv2 = ConvBN(out_ch, out_ch, kernel, act=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = ConvBN(in_ch, out_ch, 1, stride, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv2(self.conv1(x)) + self.shortcut(x))


class DwSepBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, kernel: int, skip: bool) -> None:
        super().__init__()
        self.dw = ConvBN(in_ch, in_ch, kernel, stride, groups=in_ch)
        self.pw = ConvBN(in_ch, out_ch, 1)
        self.skip = skip

    def forward(self, x: Tensor) -> Tensor:
        out = self.pw(self.dw(x))
        return out + x if self.skip else out


class MBConvBlock(nn.Module):
    def __init__(
        self, in_ch: int, out_ch: int, stride: int, kernel: int, expand: int, skip: bool
    ) -> None:
        super().__init__()
        hidden = in_ch * expand
        self.expand: nn.Module = ConvBN(in_ch, hidden, 1) if expand != 1 else nn.Identity()
        self.dw = ConvBN(hidden, hidden, kernel, stride, groups=hidden)
        self.project = ConvBN(hidden, out_ch, 1, act=False)
        self.skip = skip

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.dw(self.expand(x)))
        return out + x if self.skip else out


def build_block(block: BlockArch, in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """The module of one block (also used to time blocks alone for latency tables)."""
    if block.type == "plain":
        return PlainBlock(in_ch, out_ch, stride, block.kernel, block.skip)
    if block.type == "residual":
        return ResidualBlock(in_ch, out_ch, stride, block.kernel)
    if block.type == "dwsep":
        return DwSepBlock(in_ch, out_ch, stride, block.kernel, block.skip)
    return MBConvBlock(in_ch, out_ch, stride, block.kernel, block.expand, block.skip)


class SearchedNet(nn.Module):
    """The network of a :class:`FmnistArch`: ``stem``, ``stages.S.B`` blocks, ``pool``, ``fc``."""

    def __init__(self, arch: FmnistArch, num_classes: int = 10, in_ch: int = 1) -> None:
        super().__init__()
        self.stem = ConvBN(in_ch, arch.stem, 3)
        stages, prev = [], arch.stem
        for stage in arch.stages:
            blocks = []
            for b, block in enumerate(stage.blocks):
                blocks.append(build_block(block, prev, stage.width, stage.stride if b == 0 else 1))
                prev = stage.width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.stages(self.stem(x)))
        return self.fc(torch.flatten(x, 1))


@register_model(input_shape=FMNIST_SHAPE, num_classes=10, train_defaults=SEARCHED_TRAINING)
def fmnist_searched(arch: dict[str, Any] | None = None, num_classes: int = 10) -> nn.Module:
    """An architecture found by slimkit.search (plain, residual, depthwise-separable, MBConv)."""
    return SearchedNet(FmnistArch.parse(arch or DEFAULT_ARCH), num_classes, FMNIST_SHAPE[0])
