"""The configuration of :func:`slimkit.distill.distill`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from slimkit.config import Config
from slimkit.train import TrainConfig

__all__ = ["DistillConfig", "FeatureConfig"]


class FeatureConfig(Config):
    """One intermediate feature of the student matched to one of the teacher.

    Attributes:
        student: Module path in the student (as in ``named_modules()``, e.g. ``stages.1``) whose
            output is matched.
        teacher: Module path in the teacher whose output is the target.
        kind: ``hint`` (FitNets: mean squared error between the student's feature, through a
            learned 1x1 convolution or linear adapter when the widths differ, and the
            teacher's; the adapter trains with the student and is dropped afterwards) or
            ``attention`` (attention transfer: squared distance between the L2-normalized
            spatial maps of mean squared activations, summed over positions, averaged over
            the batch; needs ``[N, C, H, W]`` features, any widths).
        weight: Weight of this term in the loss.

    Different spatial sizes are matched by average-pooling the larger feature to the smaller.

    Example:
        >>> FeatureConfig(student="5", teacher="stages.0").kind
        'hint'
    """

    student: str = Field(min_length=1)
    teacher: str = Field(min_length=1)
    kind: Literal["hint", "attention"] = "hint"
    weight: float = Field(default=1.0, ge=0)


class DistillConfig(Config):
    """How a student learns from a teacher.

    The loss on a batch is ``(1 - alpha) * CE(student, labels) + alpha * T^2 *
    KL(softmax(teacher / T) || softmax(student / T))`` (see :func:`kd_loss`) plus each feature
    term times its weight.

    Attributes:
        temperature: ``T``: how much the softmax of both models is flattened.
        alpha: Weight of the soft-target term; ``0`` is plain cross-entropy.
        soft_only: Train on the teacher's soft targets alone, without labels (unlabeled data).
            Samples labelled ``-100`` get the soft term alone in any case.
        features: Intermediate features to match (FitNets hints, attention transfer).
        cache_teacher: Compute the teacher's logits once, before training, instead of in every
            epoch. ``auto``: when the inputs are the same every epoch (``train.augment`` off) and
            no feature is matched (features need the teacher's forward pass anyway).
        train: The training run (epochs, learning rate, ...); ``batch_size`` and
            ``label_smoothing`` apply to the student's cross-entropy as in plain training.

    Example:
        >>> cfg = DistillConfig(temperature=2.0, train={"epochs": 5, "augment": False})
        >>> cfg.caches_teacher
        True
    """

    temperature: float = Field(default=4.0, gt=0)
    alpha: float = Field(default=0.9, ge=0, le=1)
    soft_only: bool = False
    features: tuple[FeatureConfig, ...] = ()
    cache_teacher: Literal["auto"] | bool = "auto"
    train: TrainConfig = TrainConfig()

    @property
    def caches_teacher(self) -> bool:
        """``cache_teacher`` with ``auto`` resolved."""
        if self.cache_teacher == "auto":
            return not self.train.augment and not self.features
        return bool(self.cache_teacher)

    @model_validator(mode="after")
    def _cache_possible(self) -> DistillConfig:
        if self.cache_teacher is True and self.train.augment:
            raise ValueError(
                "cache_teacher is true but train.augment changes the inputs every epoch, so the "
                "teacher must see each new batch: set train.augment to false, or cache_teacher "
                "to 'auto'"
            )
        if self.cache_teacher is True and self.features:
            raise ValueError(
                "cache_teacher is true but matching features runs the teacher on every batch "
                "anyway: remove the features, or set cache_teacher to 'auto'"
            )
        return self
