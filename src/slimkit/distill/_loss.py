"""Distillation losses: Hinton's soft targets, FitNets hints and attention transfer."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["IGNORE_INDEX", "attention_loss", "attention_map", "hint_loss", "kd_loss"]

IGNORE_INDEX = -100
"""The label of an unlabeled sample (PyTorch's ``ignore_index``): it gets the soft term alone."""


def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    labels: Tensor | None,
    temperature: float = 4.0,
    alpha: float = 0.9,
    *,
    label_smoothing: float = 0.0,
) -> Tensor:
    """Hinton's distillation loss.

    ``(1 - alpha) * CE(student_logits, labels)
    + alpha * T^2 * KL(softmax(teacher_logits / T) || softmax(student_logits / T))``, the KL
    divergence summed over classes and averaged over samples (``batchmean``); the ``T^2`` factor
    keeps the soft term's gradients on the scale of the hard term's as ``T`` changes.

    Args:
        student_logits: ``[N, C]``.
        teacher_logits: ``[N, C]``, without gradient.
        labels: ``[N]`` class indices; entries equal to :data:`IGNORE_INDEX` (unlabeled
            samples) are left out of the cross-entropy, which averages over the labelled ones.
            ``None``: pure soft-target training, the loss is ``T^2 * KL`` whatever ``alpha``.
        temperature: ``T`` > 0.
        alpha: Weight of the soft term, in ``[0, 1]``.
        label_smoothing: Of the cross-entropy term.

    Example:
        >>> import torch
        >>> s, t = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 2.0]])
        >>> float(kd_loss(s, t, torch.tensor([0]), temperature=1.0, alpha=0.0))  # plain CE
        0.126928...
        >>> round(float(kd_loss(s, s, None, temperature=3.0)), 6)  # same logits: no KL
        0.0
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    t = temperature
    soft = F.kl_div(
        F.log_softmax(student_logits.float() / t, dim=-1),
        F.log_softmax(teacher_logits.float() / t, dim=-1),
        reduction="batchmean",
        log_target=True,
    ) * (t * t)
    if labels is None:
        return soft
    labeled = labels != IGNORE_INDEX
    if bool(labeled.any()):
        hard = F.cross_entropy(
            student_logits[labeled].float(), labels[labeled], label_smoothing=label_smoothing
        )
    else:  # a batch without labels: the soft term alone, still connected to the graph
        hard = student_logits.sum() * 0.0
    if alpha == 0.0:
        return hard
    return (1.0 - alpha) * hard + alpha * soft


def hint_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """FitNets hint: the mean squared error of two features of the same shape (the student's
    already through its adapter), after pooling the larger spatial size to the smaller.

    Example:
        >>> import torch
        >>> float(hint_loss(torch.ones(1, 2, 4, 4), torch.zeros(1, 2, 2, 2)))
        1.0
    """
    s, t = match_spatial(student_feature, teacher_feature)
    return F.mse_loss(s.float(), t.float())


def attention_map(feature: Tensor) -> Tensor:
    """Zagoruyko and Komodakis's spatial attention of ``[N, C, H, W]``: the mean of squared
    activations over channels, flattened and L2-normalized per sample, ``[N, H * W]``.

    Example:
        >>> import torch
        >>> attention_map(torch.ones(1, 3, 2, 2))
        tensor([[0.5000, 0.5000, 0.5000, 0.5000]])
    """
    return F.normalize(feature.float().pow(2).mean(dim=1).flatten(1), dim=1)


def attention_loss(student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
    """Attention transfer: the squared distance between the two attention maps, summed over
    positions and averaged over samples (features of any widths, sizes matched by pooling).

    Example:
        >>> import torch
        >>> x = torch.randn(2, 4, 6, 6)
        >>> round(float(attention_loss(x, 3 * x)), 6)
        0.0
    """
    s, t = match_spatial(student_feature, teacher_feature)
    return (attention_map(s) - attention_map(t)).pow(2).sum(dim=1).mean()


def match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two ``[N, C, H, W]`` features to the smaller's spatial size."""
    if a.ndim != 4 or a.shape[-2:] == b.shape[-2:]:
        return a, b
    size = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return _pool(a, size), _pool(b, size)


def _pool(x: Tensor, size: tuple[int, int]) -> Tensor:
    return x if tuple(x.shape[-2:]) == size else F.adaptive_avg_pool2d(x, size)
