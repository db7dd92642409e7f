"""Layer pruning: remove whole residual blocks (ResNet blocks, transformer layers).

A block whose output is its input plus a residual branch (``x + f(x)``, also through a chain of
such adds, or a ReLU after the add as in ResNet, whose input is already non-negative) becomes the
identity when removed. Blocks are found on the captured graph and ranked by how much they change
their input on calibration data: the block that changes least goes first.
"""

from __future__ import annotations

import copy

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.fx import Node

from slimkit.config import Config
from slimkit.data import DataSplits
from slimkit.errors import ConfigError
from slimkit.graph import capture

_RESIDUAL_TAIL = {"relu", "relu_"}


class LayerConfig(Config):
    """Which residual blocks to remove.

    Attributes:
        keep: Fraction of the candidate blocks to keep (at least one stays).
        candidates: Module paths to choose from; by default every residual block found whose
            input and output shapes agree (outermost blocks only).
        calibration_batches: Batches of training data (or of ``example_inputs``) for the ranking.

    Example:
        >>> LayerConfig(keep=0.75).calibration_batches
        4
    """

    keep: float = Field(default=0.75, gt=0, le=1)
    candidates: tuple[str, ...] = ()
    calibration_batches: int = Field(default=4, ge=1)


def residual_blocks(model: nn.Module, example_inputs: Tensor) -> list[str]:
    """Paths of the modules that compute ``x + f(x)`` with equal input and output shapes.

    Example:
        >>> import torch
        >>> from slimkit.models import create_model
        >>> net = create_model("fmnist_resnet", blocks=[2, 1, 1])
        >>> residual_blocks(net, torch.zeros(1, 1, 28, 28))
        ['stages.0.0', 'stages.0.1']
    """
    captured = capture(model, example_inputs[:1])
    weights = set(captured.param_of_input)
    found = [
        name
        for name, _ in model.named_modules()
        if name and _is_residual(captured.graph, name, weights)
    ]
    # Keep the innermost: a stack of blocks is itself "x + branches", but the unit is the block.
    return [n for n in found if not any(o.startswith(n + ".") for o in found)]


def drop_layers(
    model: nn.Module,
    config: LayerConfig,
    example_inputs: Tensor | None = None,
    *,
    data: DataSplits | None = None,
) -> nn.Module:
    """A copy of ``model`` with the least important residual blocks replaced by ``nn.Identity``."""
    if example_inputs is None and data is None:
        raise ConfigError("drop_layers needs example_inputs= or data=.")
    example = example_inputs if example_inputs is not None else data.example_input(1)
    known = residual_blocks(model, example)
    candidates = list(config.candidates) or known
    bad = [c for c in candidates if c not in known]
    if bad:
        raise ConfigError(f"{bad} are not residual blocks of this model; residual blocks: {known}")
    if not candidates:
        raise ConfigError("this model has no residual block that can be removed.")
    scores = _block_change(model, candidates, _calibration(example, data, config))
    n_remove = min(len(candidates) - 1, round(len(candidates) * (1 - config.keep)))
    remove = sorted(candidates, key=scores.__getitem__)[:n_remove]
    pruned = copy.deepcopy(model)
    for name in remove:
        parent, _, child = name.rpartition(".")
        setattr(pruned.get_submodule(parent), child, nn.Identity())
    pruned.slimkit_removed_blocks = {name: scores[name] for name in remove}
    return pruned


def _is_residual(graph: torch.fx.Graph, module: str, weights: set[str]) -> bool:
    inside = [n for n in graph.nodes if _in_module(n, module)]
    if not inside:
        return False
    inputs = {
        a
        for n in inside
        for a in n.all_input_nodes
        if not _in_module(a, module) and a.name not in weights and a.op != "get_attr"
    }
    last = inside[-1]
    # One tensor in, and only the last node used outside: a self-contained block.
    leaks = any(u not in inside for n in inside[:-1] for u in n.users)
    if len(inputs) != 1 or leaks:
        return False
    (x,) = inputs
    shape_in, shape_out = x.meta.get("val"), last.meta.get("val")
    if not isinstance(shape_in, Tensor) or not isinstance(shape_out, Tensor):
        return False
    return shape_in.shape == shape_out.shape and _reaches(last, x, set(inside)) == "add"


def _reaches(node: Node, x: Node, inside: set[Node]) -> str | None:
    """``"add"`` if ``node`` is ``x`` plus residual branches (optionally a final ReLU);
    ``"x"`` if it is ``x`` itself; ``None`` otherwise."""
    if node is x:
        return "x"
    if node not in inside or node.op != "call_function":
        return None
    name = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    if name in _RESIDUAL_TAIL:
        return _reaches(node.args[0], x, inside)
    if name in {"add", "add_"}:
        hits = [_reaches(a, x, inside) for a in node.args[:2] if isinstance(a, Node)]
        return "add" if any(hits) else None
    return None


def _in_module(node: Node, module: str) -> bool:
    stack = node.meta.get("nn_module_stack") or {}
    return any(path == module or path.startswith(module + ".") for path, _ in stack.values())


def _calibration(example: Tensor, data: DataSplits | None, config: LayerConfig) -> list[Tensor]:
    if data is None:
        return [example]
    return [x for i, (x, _) in enumerate(data.train_loader(64)) if i < config.calibration_batches]


@torch.no_grad()
def _block_change(model: nn.Module, names: list[str], batches: list[Tensor]) -> dict[str, float]:
    """Relative change ||block(x) - x|| / ||x|| of every block, averaged over the batches."""
    totals = dict.fromkeys(names, 0.0)

    def hook(name: str):
        def record(_: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
            x = args[0]
            totals[name] += float((out - x).norm() / x.norm().clamp(min=1e-12))

        return record

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    was_training = model.training
    try:
        model.eval()
        for x in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return {n: v / len(batches) for n, v in totals.items()}
