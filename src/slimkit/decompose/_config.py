"""The configuration of :func:`slimkit.decompose.decompose`."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from slimkit.config import Config

__all__ = ["DecomposeConfig", "Method", "RankRule"]

Method = Literal["auto", "tucker2", "cp", "svd", "spatial_svd"]
ConvMethod = Literal["tucker2", "cp", "svd", "spatial_svd"]
RankRule = Literal["macs_ratio", "energy", "vbmf", "budget"]


class DecomposeConfig(Config):
    """Which layers to factorize, how, at which ranks, and what must hold to keep each one.

    Attributes:
        method: How a ``k x k`` convolution is factorized: ``tucker2`` (1x1 -> k x k core ->
            1x1), ``cp`` (1x1 -> kx1 depthwise -> 1xk depthwise -> 1x1), ``svd`` (channel SVD:
            a k x k conv to ``rank`` channels, then 1x1), ``spatial_svd`` (kx1 then 1xk), or
            ``auto``: each of ``auto_methods`` at the same MACs, the lowest error wins (under
            ``energy``/``vbmf``, ``auto`` is ``tucker2``). Linear layers and 1x1 convolutions are
            always split by SVD into two layers.
        auto_methods: The methods ``auto`` compares on ``k x k`` convolutions.
        rank: How ranks are chosen: ``macs_ratio`` (each layer cut to ``layer_macs_ratio`` of
            its MACs), ``energy`` (keep ``energy`` of the singular-value energy), ``vbmf``
            (analytic empirical variational Bayes matrix factorization, never rank 0), or
            ``budget`` (global allocation: ranks across layers chosen greedily by least error
            added per MAC or parameter saved until ``target_macs`` / ``target_params`` is met).
            Default: ``budget`` when a target is given, else ``macs_ratio``.
        layer_macs_ratio: The MACs each layer keeps under ``rank: macs_ratio`` (0.25: a 4x cut).
        energy: The fraction of squared singular values kept under ``rank: energy``.
        target_macs: The whole model's MACs to keep, as a fraction (0.5 = half), under
            ``rank: budget``.
        target_params: The same for parameters.
        max_layer_macs_ratio: A factorization that keeps more of a layer's MACs than this is not
            considered (barely cheaper splits are slower: three layers instead of one).
        round_to: Ranks are multiples of this (smaller layers: any rank), for fast kernels.
        layers: Only these layers (module paths, shell patterns such as ``stages.*``, or a
            module holding others); empty: every Conv2d and Linear.
        ignore: Layers left as they are (same patterns).
        data_aware: With calibration inputs, fit SVD factorizations (Linear, 1x1 and channel
            SVD) to the layer's real inputs (activation-whitened SVD) instead of the weights
            alone. Calibration inputs always add the activation error to the report.
        damping: Added to the diagonal of the input covariance before its Cholesky factor, as
            a fraction of its mean diagonal.
        calibration_samples: Samples drawn when ``calib`` is a data set or one large tensor.
        calibration_batch_size: Samples per calibration forward pass.
        speed_gate: Keep a factorization only where it is measured faster than the original
            layer (PyTorch eager, the layer's real input shape, timed interleaved).
        gate_min_speedup: The speed-up a factorization must reach to be kept.
        gate_batch: The batch size the gate times each layer at; default that of
            ``example_inputs``.
        gate_seconds: Timing budget per layer and candidate.
        gate_threads: Torch threads while timing.
        tucker_iterations: HOOI iterations after the HOSVD start of Tucker-2.
        cp_iterations: Most ALS iterations of CP.
        cp_tolerance: ALS stops when the relative fit error changes less than this.
        cp_degeneracy_ratio: A CP fit is degenerate when one rank-1 term's norm exceeds the
            kernel's norm by this factor (terms that cancel each other).
        cp_on_degenerate: Then ``tucker2`` (fall back to Tucker-2 at the same MACs), ``keep``
            (leave the layer as it is) or ``warn`` (keep the CP fit, factor norms balanced,
            with a warning).
        seed: Seed of the calibration sample draw and of random CP start columns.

    Example:
        >>> DecomposeConfig().rule
        'macs_ratio'
        >>> DecomposeConfig(target_macs=0.5).rule
        'budget'
        >>> DecomposeConfig.parse({"rank": "budget"})
        Traceback (most recent call last):
        ...
        slimkit.errors.ConfigError: invalid DecomposeConfig:
          - (top level): Value error, rank 'budget' needs target_macs or target_params
    """

    method: Method = "auto"
    auto_methods: tuple[ConvMethod, ...] = Field(
        default=("tucker2", "svd", "spatial_svd"), min_length=1
    )
    rank: RankRule | None = None
    layer_macs_ratio: float = Field(default=0.25, gt=0, lt=1)
    energy: float = Field(default=0.9, gt=0, le=1)
    target_macs: float | None = Field(default=None, gt=0, lt=1)
    target_params: float | None = Field(default=None, gt=0, lt=1)
    max_layer_macs_ratio: float = Field(default=0.6, gt=0, lt=1)
    round_to: int = Field(default=8, ge=1)
    layers: tuple[str, ...] = ()
    ignore: tuple[str, ...] = ()
    data_aware: bool = True
    damping: float = Field(default=1e-4, gt=0)
    calibration_samples: int = Field(default=512, ge=1)
    calibration_batch_size: int = Field(default=64, ge=1)
    speed_gate: bool = True
    gate_min_speedup: float = Field(default=1.0, gt=0)
    gate_batch: int | None = Field(default=None, ge=1)
    gate_seconds: float = Field(default=0.2, gt=0)
    gate_threads: int = Field(default=1, ge=1)
    tucker_iterations: int = Field(default=3, ge=0)
    cp_iterations: int = Field(default=100, ge=1)
    cp_tolerance: float = Field(default=1e-6, ge=0)
    cp_degeneracy_ratio: float = Field(default=10.0, gt=1)
    cp_on_degenerate: Literal["tucker2", "keep", "warn"] = "tucker2"
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> DecomposeConfig:
        if self.target_macs is not None and self.target_params is not None:
            raise ValueError("give target_macs or target_params, not both")
        has_target = self.target_macs is not None or self.target_params is not None
        if self.rank == "budget" and not has_target:
            raise ValueError("rank 'budget' needs target_macs or target_params")
        if has_target and self.rank not in (None, "budget"):
            raise ValueError(
                f"target_macs/target_params are the budget of rank 'budget', but rank is "
                f"{self.rank!r}: leave rank out or remove the target"
            )
        if self.layer_macs_ratio > self.max_layer_macs_ratio:
            raise ValueError(
                f"layer_macs_ratio {self.layer_macs_ratio} is above "
                f"max_layer_macs_ratio {self.max_layer_macs_ratio}: no layer "
                "would be factorized; lower it or raise the maximum"
            )
        return self

    @property
    def rule(self) -> RankRule:
        """``rank`` with its default resolved."""
        if self.rank is not None:
            return self.rank
        has_target = self.target_macs is not None or self.target_params is not None
        return "budget" if has_target else "macs_ratio"

    @property
    def budget_kind(self) -> Literal["macs", "params"]:
        """What the ``budget`` rule counts."""
        return "params" if self.target_params is not None else "macs"

    def conv_methods(self) -> tuple[ConvMethod, ...]:
        """The methods tried on a ``k x k`` convolution."""
        if self.method != "auto":
            return (self.method,)
        if self.rule in ("energy", "vbmf"):
            return ("tucker2",)
        return self.auto_methods
