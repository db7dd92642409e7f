"""Knowledge distillation: a small student learns from a trained teacher's outputs.

- Soft targets (Hinton et al.): :func:`kd_loss`, ``(1 - alpha) * CE + alpha * T^2 * KL`` with
  temperature ``T``; pure soft-target training for unlabeled data (``soft_only``, or labels
  equal to ``-100`` for the unlabeled part of a data set).
- Features chosen by module name (:class:`FeatureConfig`): FitNets hints through a learned
  1x1 convolution or linear adapter when widths differ, and attention transfer; captured by
  forward hooks, so they work at any depth and on pruned or decomposed copies of a model.
- The teacher runs in eval mode without gradients; when the inputs are the same every epoch
  its logits are computed once (:func:`teacher_outputs`) and reused.
- Training is :func:`slimkit.train.train`: checkpoints and resume, and multi-process data
  parallel under ``torchrun`` with the same code.

In recipes the ``distill`` step takes the model before the most recent ``prune`` (or other
compression step) as its teacher.

Example:
    >>> import torch
    >>> s = torch.tensor([[1.0, 0.0, -1.0]])
    >>> t = torch.tensor([[2.0, 0.0, -2.0]])
    >>> round(float(kd_loss(s, t, torch.tensor([0]), temperature=2.0, alpha=0.5)), 4)
    0.3243
"""

from __future__ import annotations

from slimkit.distill._config import DistillConfig, FeatureConfig
from slimkit.distill._distill import distill, teacher_outputs
from slimkit.distill._hooks import capture_features
from slimkit.distill._loss import IGNORE_INDEX, attention_loss, attention_map, hint_loss, kd_loss

__all__ = [
    "IGNORE_INDEX",
    "DistillConfig",
    "FeatureConfig",
    "attention_loss",
    "attention_map",
    "capture_features",
    "distill",
    "hint_loss",
    "kd_loss",
    "teacher_outputs",
]
