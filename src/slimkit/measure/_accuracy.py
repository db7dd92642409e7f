"""Top-1 accuracy of a model or runner on labelled batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from slimkit.errors import DataError

Predictor = nn.Module | Callable[[Tensor], Tensor]


@torch.inference_mode()
def accuracy(model: Predictor, batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Fraction of samples whose arg-max output equals the label.

    ``model`` may be an ``nn.Module`` (evaluated in eval mode, then restored) or any callable
    that maps an input batch to logits, such as a :class:`~slimkit.measure.Runner`.

    Example:
        >>> import torch
        >>> accuracy(torch.nn.Identity(), [(torch.eye(3), torch.tensor([0, 1, 1]))])
        0.6666666666666666
    """
    return accuracies([model], batches)[0]


@torch.inference_mode()
def accuracies(
    models: Sequence[Predictor],
    batches: Iterable[tuple[Tensor, Tensor]],
    max_batch: int | None = None,
) -> list[float]:
    """Top-1 accuracy of each model, in one pass over ``batches`` (which may be a generator).

    Batches larger than ``max_batch`` are split, so that memory does not grow with the loader's
    batch size.
    """
    modes = [m.training if isinstance(m, nn.Module) else None for m in models]
    for m in models:
        if isinstance(m, nn.Module):
            m.eval()
    correct, total = [0] * len(models), 0
    try:
        for inputs, labels in batches:
            step = max_batch or len(inputs)
            for x, y in zip(inputs.split(step), labels.split(step), strict=True):
                for i, model in enumerate(models):
                    correct[i] += _correct(model, x, y)
                total += y.numel()
    finally:
        for m, training in zip(models, modes, strict=True):
            if isinstance(m, nn.Module) and training:
                m.train()
    if total == 0:
        raise DataError("accuracy needs at least one labelled sample; the data given was empty.")
    return [c / total for c in correct]


def _correct(model: Predictor, inputs: Tensor, labels: Tensor) -> int:
    logits = torch.as_tensor(model(inputs))
    if logits.shape[:-1] != labels.shape:
        raise DataError(
            f"accuracy needs outputs of shape [*labels.shape, classes]; got {tuple(logits.shape)} "
            f"for labels of shape {tuple(labels.shape)}."
        )
    return int((logits.argmax(dim=-1) == labels).sum())
