"""Tensor decomposition: factorize Conv2d and Linear layers into cheaper plain layers.

- **Tucker-2** of a conv kernel on its output and input modes (HOSVD start, HOOI sweeps):
  1x1 -> k x k core -> 1x1.
- **CP** by alternating least squares from an SVD start, as four plain convs: 1x1 (in -> R),
  kx1 depthwise, 1xk depthwise, 1x1 (R -> out); degenerate fits (rank-1 terms far larger than
  the kernel, cancelling) are detected, their factor norms balanced, and they fall back to
  Tucker-2 or keep the layer (``cp_on_degenerate``).
- **SVD** of a Linear (two Linears) or a conv (channel SVD: a conv to ``r`` channels then 1x1),
  **spatial SVD** of a k x k conv (kx1 then 1xk); **data-aware**: fitted to the layer's real
  inputs (activation-whitened SVD) when calibration inputs are given.
- **Ranks** by MACs ratio, energy kept, analytic VBMF (never rank 0), or a global MACs or
  parameter budget (greedy: least error added per MAC saved).
- **Speed gate**: each factorization is kept only where it is measured faster than the layer
  (PyTorch eager, the layer's real input shape, timed interleaved, one thread).

The result holds only plain ``nn.Conv2d``/``nn.Linear`` layers (in ``nn.Sequential``), so it
exports to ONNX, prunes, quantizes and saves (:func:`slimkit.serialize.save_model`) as any model.

Example:
    >>> import torch
    >>> from slimkit.models import create_model
    >>> model = create_model("fmnist_resnet").eval()
    >>> config = DecomposeConfig(method="tucker2", layers=("stages.2.0.conv2",), speed_gate=False)
    >>> small = decompose(model, config, torch.zeros(1, 1, 28, 28))
    >>> [type(m).__name__ for m in small.stages[2][0].conv2]
    ['Conv2d', 'Conv2d', 'Conv2d']
    >>> decomposition_report(small)["layers"][0]["macs_ratio"] <= 0.25
    True
"""

from __future__ import annotations

from slimkit.decompose._config import DecomposeConfig
from slimkit.decompose._cp import CPFit, cp_als, cp_kernel
from slimkit.decompose._decompose import decompose, decomposition_report
from slimkit.decompose._gate import measure_speedup
from slimkit.decompose._ranks import allocate, energy_rank, evbmf_rank
from slimkit.decompose._svd import SvdBasis, cholesky_factor
from slimkit.decompose._tucker import tucker2

__all__ = [
    "CPFit",
    "DecomposeConfig",
    "SvdBasis",
    "allocate",
    "cholesky_factor",
    "cp_als",
    "cp_kernel",
    "decompose",
    "decomposition_report",
    "energy_rank",
    "evbmf_rank",
    "measure_speedup",
    "tucker2",
]
