"""The shared graph: capture a model once and find the channels that must be removed together.

Pruning uses it to slice coupled channels; decomposition, fusion and quantization use the same
capture to find their layers.

Units are convolution channels and linear features (coupled across residual adds,
concatenations, grouped and depthwise convolutions, norms and flatten-to-linear), attention heads
(query, key and value rows and the output projection's columns, whole), recurrent hidden units
(every gate of every layer and direction) and channel-shuffled groups. What the graph cannot
prove exact is kept: operations it does not know are errors that name them, and reshapes the
model's own code might not follow after pruning are tried on a pruned copy first
(:attr:`DependencyGraph.notes` says what was kept and why).

Example:
    >>> import torch
    >>> from torch import nn
    >>> from slimkit.graph import build_dependency_graph
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> graph = build_dependency_graph(net, torch.randn(1, 4))
    >>> [g.size for g in graph.groups]
    [8]
"""

from __future__ import annotations

from slimkit.graph import _attention, _recurrent, _rules  # noqa: F401  (registers the rules)
from slimkit.graph._capture import CapturedGraph, CaptureError, capture
from slimkit.graph._depgraph import (
    ChannelGroup,
    DependencyGraph,
    Slice,
    Unit,
    build_dependency_graph,
)
from slimkit.graph._propagate import UnsupportedOperationError

__all__ = [
    "CaptureError",
    "CapturedGraph",
    "ChannelGroup",
    "DependencyGraph",
    "Slice",
    "Unit",
    "UnsupportedOperationError",
    "build_dependency_graph",
    "capture",
]
