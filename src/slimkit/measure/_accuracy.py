"""Top-1 accuracy of a model or runner on labelled batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

from slimkit.errors import DataError


@torch.inference_mode()
def accuracy(model: nn.Module | Callable[[Tensor], Tensor], batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Fraction of samples whose arg-max output equals the label.

    ``model`` may be an ``nn.Module`` (evaluated in eval mode, then restored) or any callable
    that maps an input batch to logits, such as a :class:`~slimkit.measure.Runner`.
    """
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        model.eval()
    correct = total = 0
    try:
        for inputs, labels in batches:
            logits = torch.as_tensor(model(inputs))
            correct += int((logits.argmax(dim=-1) == labels).sum())
            total += len(labels)
    finally:
        if was_training:
            model.train()
    if total == 0:
        raise DataError("accuracy needs at least one labelled sample; the data given was empty.")
    return correct / total
