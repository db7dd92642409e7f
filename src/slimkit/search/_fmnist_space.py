"""The built-in space of Fashion-MNIST image models (those ``fmnist_searched`` builds).

A factorized, hierarchical space in the manner of MnasNet: each stage chooses its block type,
depth and width; each block its kernel size, expansion ratio (inverted residuals) and skip
connection. Choices that do not apply are not asked (the expansion of a plain conv, the skip of
a stride-2 block), so every decision path is a distinct network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import model_validator

from slimkit.config import Config
from slimkit.errors import ConfigError
from slimkit.models._searched import BLOCK_TYPES, BlockType
from slimkit.search._space import SearchSpace, Trial

__all__ = ["FmnistSpace", "FmnistSpaceConfig", "get_space", "list_spaces", "register_space"]


class FmnistSpaceConfig(Config):
    """The options of :class:`FmnistSpace` (every field a tuple of choices).

    Attributes:
        stem_widths: Output channels of the 3x3 stem conv (at full resolution).
        stage_widths: Per stage, the output channel choices; the number of stages is its length.
        strides: Per stage, the stride of its first block.
        depths: Blocks per stage.
        kernels: Kernel sizes (odd).
        expansions: Expansion ratios of ``mbconv`` blocks.
        block_types: Block types, chosen per stage (a subset of plain, residual, dwsep, mbconv).
        skips: Skip-connection options of blocks whose input and output shapes match.
    """

    stem_widths: tuple[int, ...] = (8, 16, 24)
    stage_widths: tuple[tuple[int, ...], ...] = ((16, 24, 32), (32, 48, 64), (64, 96, 128))
    strides: tuple[int, ...] = (2, 2, 2)
    depths: tuple[int, ...] = (1, 2, 3)
    kernels: tuple[int, ...] = (3, 5)
    expansions: tuple[int, ...] = (2, 4, 6)
    block_types: tuple[BlockType, ...] = BLOCK_TYPES
    skips: tuple[bool, ...] = (False, True)

    @model_validator(mode="after")
    def _consistent(self) -> FmnistSpaceConfig:
        named = {
            "stem_widths": self.stem_widths, "depths": self.depths, "kernels": self.kernels,
            "expansions": self.expansions, "block_types": self.block_types, "skips": self.skips,
            "stage_widths": self.stage_widths,
            **{f"stage_widths[{i}]": w for i, w in enumerate(self.stage_widths)},
        }  # fmt: skip
        for name, options in named.items():
            if not options or (name != "stage_widths" and len(set(options)) != len(options)):
                raise ValueError(f"{name} must list distinct choices, got {list(options)}")
        if len(self.strides) != len(self.stage_widths):
            raise ValueError(
                f"strides has {len(self.strides)} entries but stage_widths {len(self.stage_widths)}"
                ": give one stride per stage"
            )
        if any(not w or min(w) < 1 for w in self.stage_widths) or min(self.stem_widths) < 1:
            raise ValueError("widths must be positive")
        if min(self.depths) < 1 or any(k % 2 == 0 or k < 1 for k in self.kernels):
            raise ValueError("depths must be >= 1 and kernels odd")
        if min(self.expansions) < 1 or any(s not in (1, 2) for s in self.strides):
            raise ValueError("expansions must be >= 1 and strides 1 or 2")
        return self


class FmnistSpace(SearchSpace):
    """Fashion-MNIST models: per stage a block type, depth and width; per block kernel etc.

    Decision names: ``stem``; ``sS.type``, ``sS.depth``, ``sS.width``; ``sS.bB.kernel``,
    ``sS.bB.expand`` (``mbconv`` only), ``sS.bB.skip`` (blocks after the first, not
    ``residual``, whose shortcut is built in). The architecture returned is the JSON that
    ``create_model("fmnist_searched", arch=...)`` takes.

    Example:
        >>> space = FmnistSpace(block_types=("residual",), depths=(1,), kernels=(3,))
        >>> space.size()
        81
        >>> space.sample(seed=1).arch["stages"][0]["blocks"]
        [{'type': 'residual', 'kernel': 3, 'expand': 1, 'skip': True}]
    """

    def __init__(self, config: FmnistSpaceConfig | None = None, **options: Any) -> None:
        if config is not None and options:
            raise ConfigError("FmnistSpace takes a config or keyword options, not both.")
        self.config = config or FmnistSpaceConfig.parse(options)

    def define(self, trial: Trial) -> dict[str, Any]:
        cfg = self.config
        stem = trial.suggest_categorical("stem", cfg.stem_widths)
        stages = []
        for s, (widths, stride) in enumerate(zip(cfg.stage_widths, cfg.strides, strict=True)):
            kind = trial.suggest_categorical(f"s{s}.type", cfg.block_types)
            depth = trial.suggest_categorical(f"s{s}.depth", cfg.depths)
            width = trial.suggest_categorical(f"s{s}.width", widths)
            blocks = [self._block(trial, f"s{s}.b{b}", kind, b > 0) for b in range(depth)]
            stages.append({"width": width, "stride": stride, "blocks": blocks})
        return {"stem": stem, "stages": stages}

    def _block(self, trial: Trial, prefix: str, kind: str, can_skip: bool) -> dict[str, Any]:
        cfg = self.config
        kernel = trial.suggest_categorical(f"{prefix}.kernel", cfg.kernels)
        expand = (
            trial.suggest_categorical(f"{prefix}.expand", cfg.expansions) if kind == "mbconv" else 1
        )
        if kind == "residual":
            skip = True
        elif can_skip:
            skip = trial.suggest_categorical(f"{prefix}.skip", cfg.skips)
        else:
            skip = False
        return {"type": kind, "kernel": kernel, "expand": expand, "skip": skip}

    def size(self) -> int:
        """The exact number of architectures (closed form of the decision tree)."""
        cfg = self.config
        total = len(cfg.stem_widths)
        for widths in cfg.stage_widths:
            per_stage = 0
            for kind in cfg.block_types:
                for depth in cfg.depths:
                    per_stage += len(widths) * math.prod(
                        self._block_options(kind, b > 0) for b in range(depth)
                    )
            total *= per_stage
        return total

    def _block_options(self, kind: str, can_skip: bool) -> int:
        cfg = self.config
        n = len(cfg.kernels)
        if kind == "mbconv":
            n *= len(cfg.expansions)
        if kind != "residual" and can_skip:
            n *= len(cfg.skips)
        return n

    def options(self) -> dict[str, Any]:
        """The space's options as JSON data (to rebuild it: ``FmnistSpace(**options)``)."""
        return self.config.model_dump(mode="json")


_SPACES: dict[str, Callable[..., SearchSpace]] = {"fmnist": FmnistSpace}


def register_space(name: str, factory: Callable[..., SearchSpace]) -> None:
    """Make ``factory(**options)`` available as ``SearchConfig(space=name)``."""
    _SPACES[name] = factory


def list_spaces() -> list[str]:
    """Names of the registered search spaces."""
    return sorted(_SPACES)


def get_space(name: str, **options: Any) -> SearchSpace:
    """Build the registered space ``name`` with ``options``.

    Example:
        >>> get_space("fmnist", depths=[1]).config.depths
        (1,)
    """
    if name not in _SPACES:
        raise ConfigError(f"unknown search space {name!r}; registered: {', '.join(list_spaces())}.")
    return _SPACES[name](**options)
