"""Rules for recurrent layers (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``).

A hidden unit is one row of every gate in the input and hidden weights (and biases), one column
of the hidden weights, the matching output feature in each direction, and the next layer's input
columns. ``nn.LSTM`` and friends keep one ``hidden_size`` for all layers and directions, so unit
``j`` of every layer and direction goes together: removing it everywhere is still exact, and the
module stays a plain ``nn.LSTM`` with a smaller ``hidden_size``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch.fx import Node

from slimkit.graph._labels import Labels
from slimkit.graph._propagate import UnsupportedOperationError, Walker, aligned, axis, rule

_GATES = {"lstm": 4, "gru": 3, "rnn_tanh": 1, "rnn_relu": 1}  # gate blocks stacked in the rows


@rule("lstm", "gru", "rnn_tanh", "rnn_relu")
def _rnn(w: Walker, node: Node) -> Any:
    if node.target._overloadname != "input":
        raise UnsupportedOperationError(
            f"{node.target} (packed sequences) in module {w.module_path(node)!r}: pass padded "
            "batches, or ignore that module to keep its units."
        )
    x, hx, params = node.args[0], node.args[1], list(node.args[2])
    has_biases, num_layers = bool(node.args[3]), int(node.args[4])
    dirs = 2 if bool(node.args[7]) else 1
    gates = _GATES[node.target.overloadpacket.__name__]
    per = 4 if has_biases else 2
    if len(params) != per * num_layers * dirs:
        # LSTM projections (proj_size) add weights whose shapes this rule does not follow.
        return w.opaque(node)
    units = w.weight_dims(params[1])[1]  # the columns of the first hidden weight
    hidden = len(units)
    x_lab = w.labels(x)
    inputs = axis(x_lab.materialize([x_lab.ids.ndim - 1]), -1)
    for layer in range(num_layers):
        for d in range(dirs):
            w_ih, w_hh, *biases = params[(layer * dirs + d) * per :][:per]
            ih_rows, ih_cols = w.weight_dims(w_ih)
            hh_rows, hh_cols = w.weight_dims(w_hh)
            w.space.couple(ih_cols, inputs)
            w.space.couple(hh_cols, units)
            for rows in (ih_rows, hh_rows, *(w.weight_dims(b)[0] for b in biases)):
                w.space.couple(rows.reshape(gates, hidden), units)
        inputs = np.tile(units, dirs)  # the next layer reads every direction's units
    own_module = w.module_path(node)
    for h in hx if isinstance(hx, list | tuple) else [hx]:
        lab = w.labels(h)
        if lab is None:
            continue
        if (lab.ids >= 0).any():
            w.space.couple(aligned(lab, 3), units.reshape(1, 1, -1))
        elif isinstance(h, Node) and w.module_path(h) != own_module:
            # A constant initial state made outside the layer would not shrink with it.
            w.space.fix(units)
    outs = []
    for v in node.meta["val"]:
        shape = tuple(v.shape)
        ids = np.tile(units, dirs) if v is node.meta["val"][0] else units
        outs.append(Labels(ids.reshape((1,) * (len(shape) - 1) + (-1,)), shape))
    return outs
