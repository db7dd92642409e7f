"""Registry of reference models, keyed by name like timm's.

Example:
    >>> import slimkit.models as models
    >>> models.list_models("fmnist_*")
    ['fmnist_cnn', 'fmnist_resnet', 'fmnist_rnn', 'fmnist_searched', 'fmnist_tiny']
    >>> net = models.create_model("fmnist_tiny")
    >>> net.slimkit_spec.name
    'fmnist_tiny'
"""

from __future__ import annotations

from slimkit.models import _fmnist, _minilm, _searched  # noqa: F401  (registers the models)
from slimkit.models._registry import (
    ModelInfo,
    ModelSpec,
    create_model,
    list_models,
    model_info,
    register_model,
)

__all__ = ["ModelInfo", "ModelSpec", "create_model", "list_models", "model_info", "register_model"]
