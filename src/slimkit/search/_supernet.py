"""A one-shot supernet with elastic depth, width, kernel and expansion (Once-for-All style).

The supernet holds, per block position and block type, the weights of the largest block the
space allows. A sub-network uses the first ``d`` blocks of each stage, the first ``k`` output
channels of every layer, the centre ``k x k`` of every kernel and the first ``in x e`` hidden
channels of an inverted residual, so every architecture of the space runs on shared weights.
It is trained once with the sandwich rule (the largest, the smallest and a few random
sub-networks every step, the smaller ones distilled from the largest's predictions in place).
Its BatchNorm statistics, shared by all sub-networks, are recalibrated on a few training batches
per candidate before it is evaluated. :meth:`Supernet.export` gives the candidate as a plain
``fmnist_searched`` model holding the inherited weights.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from slimkit._io import atomic_path, write_json
from slimkit.config import Config
from slimkit.data import DataSplits
from slimkit.errors import ConfigError, SerializationError
from slimkit.measure._accuracy import accuracy
from slimkit.models import create_model
from slimkit.search._fmnist_space import FmnistSpace
from slimkit.train import TrainConfig, train

__all__ = [
    "Supernet",
    "SupernetConfig",
    "load_supernet",
    "recalibrate_bn",
    "train_supernet",
]

SUPERNET_FILE, SUPERNET_SPEC = "supernet.safetensors", "supernet.json"


class SupernetConfig(Config):
    """How to train the supernet and how to evaluate its sub-networks.

    Attributes:
        train: The training of the supernet (epochs, learning rate, ...).
        sandwich: Random sub-networks per step, besides the largest and the smallest.
        distill: Train the smaller sub-networks on the largest one's predictions (in-place
            distillation) instead of the labels.
        recalibration_batches: Training batches that recompute the BatchNorm statistics of each
            candidate before it is evaluated.
        recalibration_batch_size: Their size.

    Example:
        >>> SupernetConfig().sandwich
        2
    """

    train: TrainConfig = TrainConfig(epochs=3, lr=0.1, label_smoothing=0.1, augment=False)
    sandwich: int = Field(default=2, ge=0)
    distill: bool = True
    recalibration_batches: int = Field(default=4, ge=1)
    recalibration_batch_size: int = Field(default=256, ge=1)


def _batch_norm(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """``bn`` on the first ``x.shape[1]`` channels (its statistics updated in place)."""
    c = x.shape[1]
    factor = 0.0
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch = bn.training or bn.running_mean is None
    return F.batch_norm(
        x,
        None if bn.running_mean is None else bn.running_mean[:c],
        None if bn.running_var is None else bn.running_var[:c],
        bn.weight[:c],
        bn.bias[:c],
        use_batch,
        factor,
        bn.eps,
    )


class ElasticConvBN(nn.Module):
    """Conv + BN (+ ReLU) at its largest size; runs on the first channels and centre kernel."""

    def __init__(
        self, in_max: int, out_max: int, kernel_max: int, stride: int = 1, *,
        depthwise: bool = False, act: bool = True,
    ) -> None:  # fmt: skip
        super().__init__()
        groups = in_max if depthwise else 1
        self.conv = nn.Conv2d(in_max, out_max, kernel_max, stride, kernel_max // 2,
                              groups=groups, bias=False)  # fmt: skip
        self.bn = nn.BatchNorm2d(out_max)
        self.act = nn.ReLU(inplace=True) if act else None
        self.depthwise = depthwise

    def forward(self, x: Tensor, out: int, kernel: int) -> Tensor:
        in_c = x.shape[1]
        weight = self.conv.weight
        if self.depthwise:
            weight, out, groups = weight[:in_c], in_c, in_c
        else:
            weight, groups = weight[:out, :in_c], 1
        full = weight.shape[-1]
        if kernel > full:
            raise ConfigError(f"kernel {kernel} is larger than the supernet's {full}.")
        if kernel < full:
            s = (full - kernel) // 2
            weight = weight[:, :, s : s + kernel, s : s + kernel]
        y = F.conv2d(x, weight, None, self.conv.stride, kernel // 2, 1, groups)
        y = _batch_norm(self.bn, y)
        return self.act(y) if self.act is not None else y


class _ElasticPlain(nn.Module):
    def __init__(self, in_max: int, out_max: int, stride: int, kmax: int, emax: int) -> None:
        super().__init__()
        self.conv = ElasticConvBN(in_max, out_max, kmax, stride)

    def forward(self, x: Tensor, out: int, block: dict[str, Any]) -> Tensor:
        y = self.conv(x, out, block["kernel"])
        return y + x if block["skip"] else y


class _ElasticResidual(nn.Module):
    def __init__(self, in_max: int, out_max: int, stride: int, kmax: int, emax: int) -> None:
        super().__init__()
        self.conv1 = ElasticConvBN(in_max, out_max, kmax, stride)
        self.conv2 = ElasticConvBN(out_max, out_max, kmax, act=False)
        self.stride = stride
        # The first block of a stage may change the width; later ones never do.
        self.shortcut = ElasticConvBN(in_max, out_max, 1, stride, act=False)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, out: int, block: dict[str, Any]) -> Tensor:
        k = block["kernel"]
        y = self.conv2(self.conv1(x, out, k), out, k)
        # As fmnist_searched builds it: a projection exactly when the shape changes.
        short = self.shortcut(x, out, 1) if self.stride != 1 or x.shape[1] != out else x
        return self.act(y + short)


class _ElasticDwSep(nn.Module):
    def __init__(self, in_max: int, out_max: int, stride: int, kmax: int, emax: int) -> None:
        super().__init__()
        self.dw = ElasticConvBN(in_max, in_max, kmax, stride, depthwise=True)
        self.pw = ElasticConvBN(in_max, out_max, 1)

    def forward(self, x: Tensor, out: int, block: dict[str, Any]) -> Tensor:
        y = self.pw(self.dw(x, x.shape[1], block["kernel"]), out, 1)
        return y + x if block["skip"] else y


class _ElasticMBConv(nn.Module):
    def __init__(self, in_max: int, out_max: int, stride: int, kmax: int, emax: int) -> None:
        super().__init__()
        hidden = in_max * emax
        self.expand = ElasticConvBN(in_max, hidden, 1)
        self.dw = ElasticConvBN(hidden, hidden, kmax, stride, depthwise=True)
        self.project = ElasticConvBN(hidden, out_max, 1, act=False)

    def forward(self, x: Tensor, out: int, block: dict[str, Any]) -> Tensor:
        e = block["expand"]
        h = self.expand(x, x.shape[1] * e, 1) if e != 1 else x
        y = self.project(self.dw(h, h.shape[1], block["kernel"]), out, 1)
        return y + x if block["skip"] else y


_ELASTIC = {
    "plain": _ElasticPlain,
    "residual": _ElasticResidual,
    "dwsep": _ElasticDwSep,
    "mbconv": _ElasticMBConv,
}


class Supernet(nn.Module):
    """The weight-sharing network of a :class:`FmnistSpace` (every block type it allows).

    Module names mirror ``fmnist_searched`` with the block type inserted
    (``stages.S.B.TYPE....``), so a sub-network's weights are slices of the same tensors.
    ``forward(x, arch)`` runs the sub-network ``arch`` (default :attr:`active`).

    Example:
        >>> import torch
        >>> space = FmnistSpace(depths=(1, 2), block_types=("mbconv",))
        >>> net = Supernet(space).eval()
        >>> arch = space.sample(seed=3).arch
        >>> small = net.export(arch)
        >>> x = torch.randn(2, 1, 28, 28)
        >>> torch.allclose(net(x, arch), small(x), atol=1e-5)
        True
    """

    def __init__(self, space: FmnistSpace, num_classes: int = 10, in_ch: int = 1) -> None:
        super().__init__()
        cfg = space.config
        self.space, self.num_classes, self.in_ch = space, num_classes, in_ch
        kmax, emax = max(cfg.kernels), max(cfg.expansions)
        prev = max(cfg.stem_widths)
        self.stem = ElasticConvBN(in_ch, prev, 3)
        stages = []
        for widths, stride in zip(cfg.stage_widths, cfg.strides, strict=True):
            out = max(widths)
            blocks = []
            for b in range(max(cfg.depths)):
                in_max, s = (prev, stride) if b == 0 else (out, 1)
                blocks.append(
                    nn.ModuleDict(
                        {t: _ELASTIC[t](in_max, out, s, kmax, emax) for t in cfg.block_types}
                    )
                )
            stages.append(nn.ModuleList(blocks))
            prev = out
        self.stages = nn.ModuleList(stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        self.active: dict[str, Any] = space.extreme(largest=True).arch

    def forward(self, x: Tensor, arch: dict[str, Any] | None = None) -> Tensor:
        arch = arch or self.active
        x = self.stem(x, arch["stem"], 3)
        for s, stage in enumerate(arch["stages"]):
            for b, block in enumerate(stage["blocks"]):
                x = self.stages[s][b][block["type"]](x, stage["width"], block)
        x = torch.flatten(self.pool(x), 1)
        return F.linear(x, self.fc.weight[:, : x.shape[1]], self.fc.bias)

    def check(self, arch: dict[str, Any]) -> None:
        """Refuse an architecture the supernet cannot run (not from its space)."""
        cfg = self.space.config
        ok = arch["stem"] <= max(cfg.stem_widths) and len(arch["stages"]) == len(cfg.strides)
        for s, stage in enumerate(arch.get("stages", [])[: len(cfg.strides)]):
            ok = ok and stage["width"] <= max(cfg.stage_widths[s])
            ok = ok and stage["stride"] == cfg.strides[s]
            ok = ok and len(stage["blocks"]) <= max(cfg.depths)
            for block in stage["blocks"]:
                ok = ok and block["type"] in cfg.block_types
                ok = ok and block["kernel"] <= max(cfg.kernels)
                ok = ok and block["expand"] <= max(cfg.expansions)
        if not ok:
            raise ConfigError(
                "this architecture is not a sub-network of the supernet (a width, depth, kernel, "
                "expansion, stride or block type beyond its space)."
            )

    def export(
        self, arch: dict[str, Any], calibration: DataSplits | Sequence[Tensor] | None = None
    ) -> nn.Module:
        """A standalone ``fmnist_searched`` model of ``arch`` with the inherited weights.

        With ``calibration`` (input batches, or a data set whose first training batches are
        used), the BatchNorm statistics are first recalibrated for ``arch``, as for its
        evaluation; otherwise the supernet's current ones are copied.
        """
        self.check(arch)
        if calibration is not None:
            if isinstance(calibration, DataSplits):
                calibration = calibration_batches(calibration)
            recalibrate_bn(self, calibration, arch)
        model = create_model("fmnist_searched", arch=arch)
        source = self.state_dict()
        state = {
            key: _slice_to(source[_source_key(key, arch)], tuple(t.shape))
            for key, t in model.state_dict().items()
        }
        model.load_state_dict(state)
        return model.eval()

    def save(self, folder: str | Path) -> Path:
        """Write ``supernet.safetensors`` and ``supernet.json`` (the space's options)."""
        folder = Path(folder)
        with atomic_path(folder / SUPERNET_FILE) as tmp:
            state = {k: v.contiguous() for k, v in self.state_dict().items()}
            save_file(state, str(tmp), metadata={"format": "slimkit-supernet"})
        spec = {"format": "slimkit-supernet", "space": self.space.options(),
                "num_classes": self.num_classes, "in_ch": self.in_ch,
                "active": self.active}  # fmt: skip
        write_json(folder / SUPERNET_SPEC, spec)
        return folder


def load_supernet(folder: str | Path) -> Supernet:
    """Rebuild a supernet written by :meth:`Supernet.save`, in eval mode."""
    folder = Path(folder)
    spec_path, weights = folder / SUPERNET_SPEC, folder / SUPERNET_FILE
    if not spec_path.is_file() or not weights.is_file():
        raise SerializationError(
            f"{folder} is not a saved supernet: it needs {SUPERNET_SPEC} and {SUPERNET_FILE} "
            "(train one with `slimkit search supernet`)."
        )
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    net = Supernet(FmnistSpace(**spec["space"]), spec["num_classes"], spec["in_ch"])
    net.load_state_dict(load_file(str(weights)))
    net.active = spec.get("active") or net.active
    return net.eval()


def _source_key(key: str, arch: dict[str, Any]) -> str:
    parts = key.split(".")
    if parts[0] != "stages":
        return key
    s, b = int(parts[1]), int(parts[2])
    kind = arch["stages"][s]["blocks"][b]["type"]
    return ".".join([*parts[:3], kind, *parts[3:]])


def _slice_to(tensor: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The first entries along the channel dims (0, 1), the centre along the spatial ones."""
    if tensor.dim() != len(shape):
        raise SerializationError(f"cannot slice a {tuple(tensor.shape)} tensor to {shape}.")
    index = []
    for dim, (have, want) in enumerate(zip(tensor.shape, shape, strict=True)):
        start = 0 if dim < 2 else (have - want) // 2
        index.append(slice(start, start + want))
    return tensor[tuple(index)].clone()


@torch.no_grad()
def recalibrate_bn(
    model: nn.Module, batches: Iterable[Tensor], arch: dict[str, Any] | None = None
) -> None:
    """Recompute every BatchNorm's statistics as the plain average over ``batches``.

    With ``arch``, ``model`` is a :class:`Supernet` and that sub-network is the one run (and
    made active). The model is left in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    if arch is not None:
        model.active = arch
    model.train()
    try:
        for x in batches:
            model(x)
    finally:
        for m, momentum in zip(norms, momenta, strict=True):
            m.momentum = momentum
        model.eval()


def calibration_batches(data: DataSplits, batches: int = 4, batch_size: int = 256) -> list[Tensor]:
    """The first ``batches`` fixed batches of a seeded shuffle of the training inputs."""
    inputs = data.calibration_inputs(batches * batch_size, seed=0)
    return list(inputs.split(batch_size))


def train_supernet(
    space: FmnistSpace | Supernet, data: DataSplits, config: SupernetConfig | None = None
) -> Supernet:
    """Train a supernet once with the sandwich rule; returns a new, trained supernet.

    The result's ``history`` holds the training loop's epochs and its ``summary`` the
    recalibrated accuracy of its largest and smallest sub-networks on ``data``'s test split.

    Every step runs the largest sub-network on the labels, then the smallest and
    ``config.sandwich`` random ones (on the largest's predictions when ``config.distill``), and
    takes one optimizer step on the summed loss. The input supernet (if one is given) is left
    untouched.
    """
    config = config or SupernetConfig()
    if isinstance(space, Supernet):
        net = space
    else:
        with torch.random.fork_rng(devices=[]):  # a reproducible initialization
            torch.manual_seed(config.train.seed)
            net = Supernet(space, num_classes=data.num_classes)
    rng = random.Random(config.train.seed)
    smoothing = config.train.label_smoothing

    def sandwich(model: nn.Module, inputs: Tensor, labels: Tensor) -> Tensor:
        largest = model.space.extreme(True, rng).arch
        archs = [model.space.extreme(False, rng).arch]
        archs += [model.space.sample(rng=rng).arch for _ in range(config.sandwich)]
        logits = model(inputs, largest)
        loss = F.cross_entropy(logits, labels, label_smoothing=smoothing)
        soft = logits.detach().softmax(dim=-1)
        for arch in archs:
            out = model(inputs, arch)
            if config.distill:
                loss = loss + F.kl_div(out.log_softmax(dim=-1), soft, reduction="batchmean")
            else:
                loss = loss + F.cross_entropy(out, labels, label_smoothing=smoothing)
        model.active = largest  # what the per-epoch test accuracy measures
        return loss

    result = train(net, config.train, data, objective=sandwich)
    trained = result.model
    trained.history = result.history
    # The per-epoch accuracies above use BatchNorm statistics mixed over sub-networks; these
    # are recalibrated, as every candidate is.
    calib = calibration_batches(data, config.recalibration_batches, config.recalibration_batch_size)
    gen = random.Random(0)
    trained.summary = {
        f"{name}_accuracy": evaluate_subnet(trained, trained.space.extreme(big, gen).arch, calib,
                                            data.test_loader())
        for name, big in (("smallest", False), ("largest", True))
    }  # fmt: skip
    return trained


def evaluate_subnet(
    supernet: Supernet, arch: dict[str, Any], calibration: Sequence[Tensor], batches: Any
) -> float:
    """Top-1 accuracy of the sub-network ``arch`` after recalibrating its BatchNorm."""
    supernet.check(arch)
    recalibrate_bn(supernet, calibration, arch)
    return accuracy(supernet, batches)
