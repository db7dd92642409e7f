"""Unstructured pruning: zero the smallest weights, at once or on a gradual cubic ramp.

The weights keep their shapes; the zeros are written into them. Nothing is left behind on the
model (no masks, no parametrizations, no hooks): the result is a plain ``nn.Module`` whose
weights happen to hold zeros. Zeros alone make nothing faster in dense kernels; they pay on disk
(see :mod:`slimkit._storage`) and in sparse kernels, whose speed ``benchmarks/sparsity.py``
measures.

Example:
    >>> from slimkit.models import create_model
    >>> model = create_model("fmnist_resnet")
    >>> sparse = sparsify(model, UnstructuredConfig(sparsity=0.8))
    >>> round(sparsity_stats(sparse, prunable_layers(model, UnstructuredConfig())).sparsity, 3)
    0.8
"""

from __future__ import annotations

import copy
import difflib
import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor, nn

from slimkit._runtime import log
from slimkit.config import Config
from slimkit.data import DataSplits
from slimkit.errors import ConfigError
from slimkit.train import TrainConfig, train

__all__ = [
    "LayerSparsity",
    "SparsityStats",
    "UnstructuredConfig",
    "cubic_sparsity",
    "prunable_layers",
    "sparsify",
    "sparsity_stats",
]

LayerType = Literal["conv", "linear"]
_LAYER_CLASSES: dict[str, tuple[type[nn.Module], ...]] = {
    "conv": (nn.Conv1d, nn.Conv2d, nn.Conv3d),
    "linear": (nn.Linear,),
}


class UnstructuredConfig(Config):
    """Which weights to zero, how many, and when.

    Attributes:
        sparsity: Fraction of the pruned layers' weights set to zero, in ``[0, 1)``.
        scope: ``global`` zeros the smallest magnitudes of all pruned layers together (layers
            end up with different sparsities); ``local`` zeros the same fraction of every layer.
        pattern: ``unstructured`` (any weight) or ``2:4`` (in every group of 4 consecutive input
            channels of one output and kernel position, the 2 smallest; the layout of sparse
            tensor cores, needs ``sparsity`` 0.5 and ignores ``scope``).
        schedule: ``one-shot`` prunes to ``sparsity`` first, then fine-tunes with the zeros kept;
            ``cubic`` raises the sparsity during fine-tuning from ``initial_sparsity`` to
            ``sparsity`` along Zhu & Gupta's cubic ramp (needs ``finetune``).
        initial_sparsity: Sparsity at the start of the cubic ramp.
        ramp_start: Where the ramp starts, as a fraction of the fine-tuning's optimizer steps.
        ramp_end: Where it reaches ``sparsity``; the steps after it fine-tune at ``sparsity``.
        update_every: Optimizer steps between two mask updates on the ramp (Zhu & Gupta's
            delta t); the zeros are restored after every step.
        layer_types: Which layers' weights are pruned: ``conv`` (Conv1d/2d/3d), ``linear``.
        skip_first: Leave the first such layer dense (in definition order: a CNN's stem,
            which has few weights and sees the raw input).
        skip_last: Leave the last such layer dense (the classifier).
        ignore: Module names left dense: exact names, shell patterns (``stages.2.*``) or a
            module holding others (``stages.0`` covers ``stages.0.0.conv1``).
        finetune: Fine-tuning with the zeros kept (``None``: prune only).

    Example:
        >>> UnstructuredConfig(sparsity=0.8, schedule="cubic", finetune=TrainConfig()).ramp_end
        0.75
        >>> UnstructuredConfig.parse({"sparsity": 1.0})
        Traceback (most recent call last):
        ...
        slimkit.errors.ConfigError: invalid UnstructuredConfig:
          - sparsity: Value error, sparsity must be in [0, 1): 1.0 would zero every pruned weight
    """

    sparsity: float = 0.5
    scope: Literal["global", "local"] = "global"
    pattern: Literal["unstructured", "2:4"] = "unstructured"
    schedule: Literal["one-shot", "cubic"] = "one-shot"
    initial_sparsity: float = Field(default=0.0, ge=0, lt=1)
    ramp_start: float = Field(default=0.0, ge=0, lt=1)
    ramp_end: float = Field(default=0.75, gt=0, le=1)
    update_every: int = Field(default=10, ge=1)
    layer_types: tuple[LayerType, ...] = Field(default=("conv", "linear"), min_length=1)
    skip_first: bool = True
    skip_last: bool = True
    ignore: tuple[str, ...] = ()
    finetune: TrainConfig | None = None

    @field_validator("sparsity")
    @classmethod
    def _sparsity_below_one(cls, value: float) -> float:
        if not 0.0 <= value < 1.0:
            raise ValueError(
                f"sparsity must be in [0, 1): {value} would zero every pruned weight"
                if value >= 1.0
                else f"sparsity must be in [0, 1), got {value}"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> UnstructuredConfig:
        if self.pattern == "2:4" and (self.sparsity != 0.5 or self.schedule != "one-shot"):
            raise ValueError(
                "pattern '2:4' zeros exactly half of the weights at once: use sparsity 0.5 and "
                "schedule 'one-shot'"
            )
        if self.schedule == "cubic":
            if self.finetune is None:
                raise ValueError(
                    "schedule 'cubic' raises the sparsity during fine-tuning: give finetune "
                    "(e.g. finetune: {epochs: 3}) or use schedule 'one-shot'"
                )
            if self.ramp_start >= self.ramp_end:
                raise ValueError(
                    f"ramp_start ({self.ramp_start}) must be below ramp_end ({self.ramp_end})"
                )
            if self.initial_sparsity > self.sparsity:
                raise ValueError(
                    f"initial_sparsity ({self.initial_sparsity}) must not exceed sparsity "
                    f"({self.sparsity})"
                )
        return self


def cubic_sparsity(step: int, final: float, initial: float, start: int, end: int) -> float:
    """Zhu & Gupta's cubic ramp: ``s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0)) ** 3``.

    ``initial`` before ``start``, ``final`` from ``end`` on: the sparsity rises fast while the
    network has many redundant weights and slowly as few are left.

    Example:
        >>> round(cubic_sparsity(50, final=0.8, initial=0.0, start=0, end=100), 6)
        0.7
    """
    if step <= start:
        return initial
    if step >= end:
        return final
    progress = (step - start) / (end - start)
    return final + (initial - final) * (1.0 - progress) ** 3


def prunable_layers(model: nn.Module, config: UnstructuredConfig) -> list[str]:
    """Names of the modules whose weights :func:`sparsify` prunes, in definition order.

    Raises:
        ConfigError: an ``ignore`` entry matches no module, or no layer is left to prune.

    Example:
        >>> from slimkit.models import create_model
        >>> prunable_layers(create_model("fmnist_cnn"), UnstructuredConfig())
        ['3', '7']
    """
    modules = dict(model.named_modules())
    _check_ignore(config.ignore, [name for name in modules if name])
    classes = tuple(c for t in config.layer_types for c in _LAYER_CLASSES[t])
    layers = [
        name
        for name, m in modules.items()
        if isinstance(m, classes) and isinstance(getattr(m, "weight", None), Tensor)
    ]
    first, last = (layers[0], layers[-1]) if layers else (None, None)
    chosen, seen = [], set()
    for name in layers:
        weight = modules[name].weight
        if (config.skip_first and name == first) or (config.skip_last and name == last):
            continue
        if _ignored(name, config.ignore) or id(weight) in seen:  # a tied weight is pruned once
            continue
        seen.add(id(weight))
        chosen.append(name)
    if not chosen:
        raise ConfigError(
            f"no layer left to prune: the model has {len(layers)} layer(s) of types "
            f"{list(config.layer_types)} ({', '.join(layers) or 'none'}), and skip_first, "
            "skip_last and ignore leave none of them."
        )
    return chosen


def sparsify(
    model: nn.Module,
    config: UnstructuredConfig,
    data: DataSplits | None = None,
    *,
    history: list[dict[str, Any]] | None = None,
) -> nn.Module:
    """Return a copy of ``model`` whose smallest-magnitude weights are zero.

    The zeros are written into the weights (a plain module comes back, with no mask or hook).
    With ``config.finetune`` the copy is fine-tuned on ``data`` with the zeros restored after
    every optimizer step; the ``cubic`` schedule raises the sparsity on the way.

    Args:
        model: The model to prune; it is not modified.
        config: How much, where and when.
        data: Training data, needed for ``finetune``.
        history: If given, the fine-tuning's per-epoch records are appended to it, each with the
            sparsity of the pruned layers' masks at the end of the epoch (``None`` for epochs
            restored from a checkpoint).

    Raises:
        ConfigError: ``finetune`` without ``data``, an unknown ``ignore`` name, or a layer
            that cannot take the ``2:4`` pattern.

    Example:
        >>> import torch
        >>> layer = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))
        >>> config = UnstructuredConfig(sparsity=0.75, skip_first=False)
        >>> int((sparsify(layer, config)[0].weight == 0).sum())
        48
    """
    if config.finetune is not None and data is None:
        raise ConfigError("sparsify with finetune needs data=: the training data to fine-tune on.")
    model = copy.deepcopy(model)
    names = prunable_layers(model, config)
    if config.finetune is None:
        _prune(model, names, config.sparsity, config)
        log(f"sparsify: {len(names)} layers at sparsity {config.sparsity:.1%} (no fine-tuning)")
        return model
    return _finetune(model, names, config, data, history)


def _finetune(
    model: nn.Module,
    names: list[str],
    config: UnstructuredConfig,
    data: DataSplits,
    history: list[dict[str, Any]] | None,
) -> nn.Module:
    assert config.finetune is not None  # checked by the caller
    per_epoch = len(data.train_loader(config.finetune.batch_size))
    schedule = _Schedule(config, config.finetune.epochs * per_epoch)
    state = {"masks": _prune(model, names, schedule.sparsity(0), config)}
    measured: dict[int, float] = {}  # epoch -> sparsity of the pruned layers at its end

    def after_step(trained: nn.Module, step: int) -> None:
        weights = _weights(trained, names)
        # Restore the zeros first, so that a mask update ranks only the surviving weights and a
        # pruned weight cannot grow back.
        _apply(weights, state["masks"])
        if schedule.updates_at(step):
            state["masks"] = _masks(weights, names, schedule.sparsity(step), config)
            _apply(weights, state["masks"])
        if step % per_epoch == 0:
            zeros = sum(int((~keep).sum()) for keep in state["masks"])
            measured[step // per_epoch] = zeros / sum(m.numel() for m in state["masks"])

    log(f"sparsify: {len(names)} layers to {config.sparsity:.1%}, {config.schedule} schedule, "
        f"{schedule.total} fine-tuning steps")  # fmt: skip
    result = train(model, config.finetune, data, after_step=after_step)
    if schedule.sparsity(len(result.history) * per_epoch) < config.sparsity:
        log("sparsify: fine-tuning stopped before the ramp's end; pruning to the target now")
    # Fold exactly at the target; after a full ramp this mask equals the last one.
    _prune(result.model, names, config.sparsity, config)
    if history is not None:
        history += [{**r, "sparsity": measured.get(int(r["epoch"]))} for r in result.history]
    return result.model


class _Schedule:
    """The target sparsity after each optimizer step, and the steps that update the masks."""

    def __init__(self, config: UnstructuredConfig, total: int) -> None:
        self.config, self.total = config, total
        self.start = round(config.ramp_start * total)
        self.end = max(self.start + 1, round(config.ramp_end * total))

    def sparsity(self, step: int) -> float:
        c = self.config
        if c.schedule == "one-shot":
            return c.sparsity
        return cubic_sparsity(step, c.sparsity, c.initial_sparsity, self.start, self.end)

    def updates_at(self, step: int) -> bool:
        if self.config.schedule == "one-shot" or not self.start < step <= self.end:
            return False
        return (step - self.start) % self.config.update_every == 0 or step == self.end


def _weights(model: nn.Module, names: list[str]) -> list[Tensor]:
    # Looked up every time: the training loop works on its own copy of the model.
    return [model.get_submodule(name).weight for name in names]


@torch.no_grad()
def _prune(
    model: nn.Module, names: list[str], sparsity: float, config: UnstructuredConfig
) -> list[Tensor]:
    weights = _weights(model, names)
    masks = _masks(weights, names, sparsity, config)
    _apply(weights, masks)
    return masks


def _apply(weights: list[Tensor], masks: list[Tensor]) -> None:
    for weight, keep in zip(weights, masks, strict=True):
        weight.data.masked_fill_(~keep, 0.0)  # masked_fill, not mul: NaN * 0 is NaN


def _masks(
    weights: list[Tensor], names: list[str], sparsity: float, config: UnstructuredConfig
) -> list[Tensor]:
    """Boolean keep-masks (True: the weight stays) reaching ``sparsity`` exactly."""
    if config.pattern == "2:4":
        return [_mask_2_4(w, name) for w, name in zip(weights, names, strict=True)]
    scores = [w.detach().abs().float().reshape(-1) for w in weights]
    if config.scope == "local":
        keeps = [_keep_largest(s, sparsity) for s in scores]
    else:
        keeps = list(_keep_largest(torch.cat(scores), sparsity).split([s.numel() for s in scores]))
    return [keep.view(w.shape) for keep, w in zip(keeps, weights, strict=True)]


def _keep_largest(scores: Tensor, sparsity: float) -> Tensor:
    """A mask zeroing exactly ``round(sparsity * n)`` of the smallest ``scores``."""
    drop = round(sparsity * scores.numel())
    keep = torch.ones_like(scores, dtype=torch.bool)
    if drop:
        keep[torch.topk(scores, drop, largest=False, sorted=False).indices] = False
    return keep


def _mask_2_4(weight: Tensor, name: str) -> Tensor:
    channels = weight.shape[1]
    if channels % 4:
        raise ConfigError(
            f"pattern '2:4' groups 4 input channels, but {name} has {channels} input channels "
            f"per group (weight {tuple(weight.shape)}); leave it dense with ignore: [{name!r}]."
        )
    # Input channels last (out, *kernel, in): groups of 4 along the reduction dimension of a
    # channels-last implicit GEMM, the layout sparse tensor cores read.
    moved = weight.detach().abs().float().movedim(1, -1)
    groups = moved.reshape(-1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, groups.topk(2, dim=1).indices, True)
    return keep.view(moved.shape).movedim(-1, 1).contiguous()


def _ignored(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


def _check_ignore(patterns: Iterable[str], module_names: list[str]) -> None:
    for pattern in patterns:
        if not any(_ignored(name, [pattern]) for name in module_names):
            close = difflib.get_close_matches(pattern, module_names, n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise ConfigError(
                f"ignore: no module of the model is called {pattern!r}{hint}; its modules are "
                f"{', '.join(module_names[:20])}{', ...' if len(module_names) > 20 else ''}."
            )


@dataclass(frozen=True)
class LayerSparsity:
    """Zeros of one layer's weight."""

    name: str
    kind: str
    shape: tuple[int, ...]
    numel: int
    zeros: int

    @property
    def sparsity(self) -> float:
        return self.zeros / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class SparsityStats:
    """Per-layer and total sparsity (zeros / numel) of a model.

    Attributes:
        layers: One entry per listed layer's weight.
        params: Parameters of the whole model (shared ones once).
        zeros: Of which zero.
    """

    layers: tuple[LayerSparsity, ...]
    params: int
    zeros: int

    @property
    def sparsity(self) -> float:
        """Zeros over the listed layers' weights (the pruned ones: the target sparsity)."""
        numel = sum(layer.numel for layer in self.layers)
        return sum(layer.zeros for layer in self.layers) / numel if numel else 0.0

    @property
    def model_sparsity(self) -> float:
        """Zeros over every parameter of the model, dense layers, biases and norms included."""
        return self.zeros / self.params if self.params else 0.0

    def rows(self) -> list[dict[str, Any]]:
        """One JSON-ready record per layer, for tables."""
        return [
            {"layer": la.name, "type": la.kind, "shape": "x".join(map(str, la.shape)),
             "params": la.numel, "zeros": la.zeros, "sparsity": round(la.sparsity, 4)}
            for la in self.layers
        ]  # fmt: skip


def sparsity_stats(model: nn.Module, layers: Iterable[str] | None = None) -> SparsityStats:
    """Count the zeros of ``layers``' weights (default: every Conv and Linear) and of the model.

    Example:
        >>> import torch
        >>> layer = torch.nn.Sequential(torch.nn.Linear(4, 2))
        >>> with torch.no_grad():
        ...     _ = layer[0].weight[0].zero_()
        >>> stats = sparsity_stats(layer)
        >>> stats.sparsity, stats.params, stats.zeros
        (0.5, 10, 4)
    """
    modules = dict(model.named_modules())
    if layers is None:
        classes = tuple(c for group in _LAYER_CLASSES.values() for c in group)
        layers = [n for n, m in modules.items() if isinstance(m, classes)]
    entries = []
    for name in layers:
        module = modules[name]
        weight = module.weight.detach()
        zeros = weight.numel() - int(torch.count_nonzero(weight))
        kind = type(module).__name__
        entries.append(LayerSparsity(name, kind, tuple(weight.shape), weight.numel(), zeros))
    params = list(model.parameters())
    total = sum(p.numel() for p in params)
    nonzero = sum(int(torch.count_nonzero(p.detach())) for p in params)
    return SparsityStats(tuple(entries), total, total - nonzero)
