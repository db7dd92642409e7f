"""CP degeneracy: detected on a tensor that has no best rank-2 approximation, and handled."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from slimkit.decompose import DecomposeConfig, cp_als, cp_kernel, decompose, decomposition_report


def _w_state(n: int = 3, noise: float = 1e-3) -> torch.Tensor:
    """``b.a.a.a + a.b.a.a + a.a.b.a + a.a.a.b``: rank 4, border rank 2.

    It is the limit of rank-2 tensors ``((a + eps b)^4 - a^4) / eps`` whose two terms grow
    as ``1 / eps`` and cancel, so no rank-2 tensor is closest to it: ALS drifts along that
    sequence, the error falling and the term norms rising without bound. A little noise takes
    ALS off the symmetric start, where it would stall.
    """
    a, b = torch.eye(n, dtype=torch.float64)[:2]
    terms = [[b, a, a, a], [a, b, a, a], [a, a, b, a], [a, a, a, b]]
    t = sum(torch.einsum("o,i,y,x->oiyx", *term) for term in terms)
    g = torch.Generator().manual_seed(1)
    return t + noise * torch.randn(t.shape, generator=g, dtype=torch.float64)


def test_well_posed_low_rank_kernel_is_fitted_without_degeneracy() -> None:
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(n, 4, generator=g, dtype=torch.float64) for n in (10, 8, 3, 3)]
    fit = cp_als(cp_kernel(parts), 4, iterations=300)
    assert fit.error < 1e-4
    assert fit.term_ratio < 1.5 and not fit.degenerate(10.0)


def test_term_norms_diverge_on_a_tensor_without_best_rank2_approximation() -> None:
    t = _w_state()
    fits = [cp_als(t, 2, iterations=n, tolerance=0.0) for n in (50, 200, 1000)]
    errors = [f.error for f in fits]
    ratios = [f.term_ratio for f in fits]
    assert errors[0] > errors[1] > errors[2] > 1e-3  # better and better, never reached
    assert ratios[0] < ratios[1] < ratios[2]  # paid for with ever larger cancelling terms
    assert not fits[0].degenerate(2.5) and fits[2].degenerate(2.5)
    assert all(f.finite for f in fits)


def _w_state_conv() -> nn.Conv2d:
    conv = nn.Conv2d(3, 3, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(_w_state().float())
    return conv


def _cp_config(on_degenerate: str) -> DecomposeConfig:
    # At 0.3 of the MACs a 3x3 conv of 3 channels gets CP rank 2.
    return DecomposeConfig(
        method="cp",
        layer_macs_ratio=0.3,
        cp_iterations=400,
        cp_tolerance=0.0,
        cp_degeneracy_ratio=2.3,
        speed_gate=False,
        cp_on_degenerate=on_degenerate,
    )


def test_degenerate_cp_falls_back_to_tucker2_and_says_so() -> None:
    model = nn.Sequential(_w_state_conv())
    x = torch.randn(1, 3, 8, 8)
    small = decompose(model, _cp_config("tucker2"), x)
    [row] = decomposition_report(small)["layers"]
    assert row["kept"] and row["method"] == "tucker2"
    assert "degenerate" in row["fallback"] and row["cp_degenerate"][0]["rank"] == 2
    assert row["cp_degenerate"][0]["term_ratio"] > 2.3
    assert len(small[0]) == 3  # 1x1 -> core -> 1x1


def test_degenerate_cp_can_keep_the_layer_or_warn() -> None:
    model = nn.Sequential(_w_state_conv())
    x = torch.randn(1, 3, 8, 8)
    kept = decompose(model, _cp_config("keep"), x)
    [row] = decomposition_report(kept)["layers"]
    assert not row["kept"] and "degenerate" in row["reason"]
    assert isinstance(kept[0], nn.Conv2d)
    with pytest.warns(UserWarning, match="degenerate"):
        warned = decompose(model, _cp_config("warn"), x)
    [row] = decomposition_report(warned)["layers"]
    assert row["kept"] and row["method"] == "cp" and row["cp_degenerate"]
    assert len(warned[0]) == 4
