"""Data sets: Fashion-MNIST from its original IDX files, in-memory splits and fast loaders.

Data sets are registered by name; recipes refer to them by that name (``data: fashion-mnist``).

Example:
    >>> from slimkit.data import DataConfig, load_dataset
    >>> data = load_dataset(DataConfig(name="fashion-mnist", train_subset=1000))  # doctest: +SKIP
    >>> data.train_inputs.shape  # doctest: +SKIP
    torch.Size([1000, 1, 28, 28])
"""

from __future__ import annotations

from slimkit.data._datasets import DataConfig, list_datasets, load_dataset, register_dataset
from slimkit.data._fashion_mnist import load_fashion_mnist, locate_fashion_mnist
from slimkit.data._idx import read_idx
from slimkit.data._loader import DataSplits, TensorLoader
from slimkit.data._text import text_samples

__all__ = [
    "DataConfig",
    "DataSplits",
    "TensorLoader",
    "list_datasets",
    "load_dataset",
    "load_fashion_mnist",
    "locate_fashion_mnist",
    "read_idx",
    "register_dataset",
    "text_samples",
]
