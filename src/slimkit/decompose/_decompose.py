"""The ``decompose`` verb: choose, fit, gate and install the factorizations of a model's layers."""

from __future__ import annotations

import copy
import fnmatch
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from slimkit._runtime import log
from slimkit.data import DataSplits
from slimkit.decompose._calib import (
    Calibration,
    calibration_batches,
    input_covariances,
    trace_layers,
)
from slimkit.decompose._config import DecomposeConfig
from slimkit.decompose._cp import CPFit, cp_cost, cp_option
from slimkit.decompose._gate import measure_speedup
from slimkit.decompose._layers import Factorization, LayerGeometry, skip_reason
from slimkit.decompose._ranks import allocate, candidate_ranks, energy_rank, evbmf_rank, round_rank
from slimkit.decompose._svd import (
    SvdBasis,
    channel_svd_macs,
    cholesky_factor,
    spatial_matrix,
    spatial_svd_macs,
    spatial_svd_options,
    svd_basis,
    svd_options,
)
from slimkit.decompose._tucker import tucker2_cost, tucker2_option, tucker2_rank_limits
from slimkit.errors import ConfigError
from slimkit.measure import count_macs, count_params

__all__ = ["REPORT_ATTR", "decompose", "decomposition_report"]

REPORT_ATTR = "slimkit_decomposition"
# MAC ratios at which the budget rule offers each layer a factorization (per method).
_RATIO_GRID = (0.6, 0.5, 0.42, 0.35, 0.3, 0.25, 0.2, 0.16, 0.12, 0.09, 0.06, 0.04)
_GATE_ROUNDS = 4


@dataclass
class _Layer:
    """One layer being decomposed: where it is, what it sees, and what was decided."""

    name: str
    module: nn.Module
    geo: LayerGeometry
    example: Tensor
    cov: Tensor | None = None
    whiten: Tensor | None = None
    options: list[Factorization] = field(default_factory=list)
    chosen: Factorization | None = None
    speedups: dict[tuple[str, tuple[int, ...]], float] = field(default_factory=dict)
    reason: str = ""
    notes: dict[str, Any] = field(default_factory=dict)


def decompose(
    model: nn.Module,
    config: DecomposeConfig | None = None,
    example_inputs: Tensor | None = None,
    *,
    calib: Calibration | None = None,
) -> nn.Module:
    """Return a copy of ``model`` whose Conv2d/Linear layers are replaced by factorizations.

    Each chosen layer becomes an ``nn.Sequential`` of plain ``Conv2d``/``Linear`` layers
    (Tucker-2, CP, SVD or spatial SVD; see :class:`DecomposeConfig`), so the result exports to
    ONNX, prunes, quantizes and saves like any model. With the speed gate on (the default) a
    factorization is kept only where it is measured faster than the layer it replaces. The
    per-layer report (method, rank, errors, MACs ratio, measured speed-up, kept and why) is
    :func:`decomposition_report` of the result.

    Args:
        model: The model; it is not modified.
        config: What to factorize and how (default: every layer cut to 1/4 of its MACs).
        example_inputs: An input batch: it gives each layer's real input shape (batch size
            included, which the speed gate times at). Default: the first test sample of
            ``calib`` when it is a data set.
        calib: Calibration inputs (a :class:`~slimkit.data.DataSplits`, a tensor, or an
            iterable of batches): activation errors in the report and, with ``data_aware``,
            SVD factors fitted to the layers' real inputs.

    Raises:
        ConfigError: no example input, no layer that can be factorized, or a MACs budget on
            a model whose MACs cannot be counted. A budget the layers cannot reach is not an
            error: the report's ``allocation`` says how far it got.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
        >>> small = decompose(model, DecomposeConfig(layer_macs_ratio=0.5, speed_gate=False),
        ...                   torch.randn(1, 64))
        >>> small[0]
        Sequential(
          (0): Linear(in_features=64, out_features=16, bias=False)
          (1): Linear(in_features=16, out_features=64, bias=True)
        )
        >>> [(r["layer"], r["method"], r["rank"]) for r in decomposition_report(small)["layers"]]
        [('0', 'svd', [16]), ('2', 'svd', [4])]
    """
    config = config or DecomposeConfig()
    example = _example(example_inputs, calib)
    new = copy.deepcopy(model)
    targets, skipped = _targets(new, config)
    layers, more_skipped = _traced(new, targets, example)
    skipped.update(more_skipped)
    if calib is not None and layers:
        batches = calibration_batches(
            calib, config.calibration_samples, config.calibration_batch_size, config.seed
        )
        covs = input_covariances(new, {la.name: la.module for la in layers}, batches)
        for layer in layers:
            layer.cov = covs.get(layer.name)
            if config.data_aware and layer.cov is not None:
                layer.whiten = cholesky_factor(layer.cov, config.damping)
    for layer in layers:
        layer.options = _layer_options(layer, config)
    if config.rule == "budget":
        summary = _choose_by_budget(model, example, layers, config)
    else:
        summary = {}
        for layer in layers:
            _choose_one(layer, config)
    _install(new, layers)
    report = _report(model, new, example, layers, skipped, config, summary)
    new.__dict__[REPORT_ATTR] = report
    kept = sum(1 for la in layers if la.chosen is not None)
    log(
        f"decompose: {kept}/{len(layers) + len(skipped)} layers factorized, MACs "
        f"{report['macs_before']:,} -> {report['macs_after']:,}"
    )
    return new


def decomposition_report(model: nn.Module) -> dict[str, Any]:
    """The report :func:`decompose` attached to its result (``{}`` for other models)."""
    return dict(getattr(model, REPORT_ATTR, {}) or {})


# --- which layers -----------------------------------------------------------------------------


def _example(example_inputs: Tensor | None, calib: Calibration | None) -> Tensor:
    if example_inputs is not None:
        return example_inputs
    if isinstance(calib, DataSplits):
        return calib.example_input(1)
    raise ConfigError(
        "decompose needs example_inputs (a real input batch: it gives each layer's input "
        "shape), or calib= a DataSplits to take its first test sample from."
    )


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


def _targets(model: nn.Module, config: DecomposeConfig) -> tuple[dict[str, nn.Module], dict]:
    targets: dict[str, nn.Module] = {}
    skipped: dict[str, str] = {}
    for name, module in model.named_modules():
        if not name or not isinstance(module, nn.Linear | nn.modules.conv._ConvNd):
            continue
        if config.layers and not _matches(name, config.layers):
            continue
        if _matches(name, config.ignore):
            skipped[name] = "ignored (config.ignore)"
            continue
        reason = skip_reason(module)
        if reason is None:
            targets[name] = module
        else:
            skipped[name] = reason
    if not targets:
        which = f"matching {list(config.layers)}" if config.layers else "in the model"
        raise ConfigError(
            f"no Conv2d or Linear layer {which} can be factorized"
            + (f" ({len(skipped)} skipped: e.g. {next(iter(skipped.items()))})" if skipped else "")
            + "; check config.layers / config.ignore."
        )
    return targets, skipped


def _traced(
    model: nn.Module, targets: dict[str, nn.Module], example: Tensor
) -> tuple[list[_Layer], dict[str, str]]:
    traced, calls = trace_layers(model, targets, example)
    layers, skipped = [], {}
    for name, module in targets.items():
        if name not in traced:
            skipped[name] = "not run by the example input"
        elif calls[name] > 1:
            skipped[name] = f"runs {calls[name]} times per forward (a shared layer)"
        else:
            geo, x = traced[name]
            layers.append(_Layer(name, module, geo, x))
    return layers, skipped


# --- options per layer ------------------------------------------------------------------------


def _methods(layer: _Layer, config: DecomposeConfig) -> tuple[str, ...]:
    if layer.geo.pointwise:
        return ("svd",)
    methods = config.conv_methods()
    if 1 in layer.geo.kernel:  # a kx1 or 1xk kernel has no spatial split
        methods = tuple(m for m in methods if m != "spatial_svd") or ("tucker2",)
    return methods


def _layer_options(layer: _Layer, config: DecomposeConfig) -> list[Factorization]:
    """Every factorization considered for ``layer`` under the config's rank rule."""
    options: list[Factorization] = []
    for method in _methods(layer, config):
        options += _method_options(layer, method, config)
    return options


def _method_options(layer: _Layer, method: str, config: DecomposeConfig) -> list[Factorization]:
    geo, module = layer.geo, layer.module
    kh, kw = geo.kernel
    if method == "svd":
        weight = module.weight.detach()
        basis = svd_basis(weight, layer.cov, layer.whiten)
        ranks = _ranks_for(
            config,
            layer,
            candidate_ranks(basis.max_rank, config.round_to),
            lambda r: channel_svd_macs(geo, r),
            lambda: _svd_rank(weight, layer.whiten, basis, config),
        )
        return svd_options(module, geo, basis, ranks)
    if method == "spatial_svd":
        limit = min(geo.in_ch * kh, geo.out_ch * kw)
        ranks = _ranks_for(
            config,
            layer,
            candidate_ranks(limit, config.round_to),
            lambda r: spatial_svd_macs(geo, r),
            lambda: _spatial_rank(module.weight.detach(), config, limit),
        )
        return spatial_svd_options(module, geo, ranks, layer.cov)
    if method == "tucker2":
        pairs = _tucker_pairs(geo, config.round_to)
        chosen = _ranks_for(
            config,
            layer,
            pairs,
            lambda p: tucker2_cost(geo, p),
            lambda: _tucker_ranks(module.weight.detach(), geo, config),
        )
        return [tucker2_option(module, geo, p, config.tucker_iterations, layer.cov) for p in chosen]
    return _cp_options(layer, config)


def _ranks_for(
    config: DecomposeConfig, layer: _Layer, ranks: list, cost: Any, spectral: Any
) -> list:
    """The ranks (ints or Tucker pairs) to fit under the config's rule.

    ``ranks`` are sorted by increasing cost; ``cost(rank)`` gives ``(macs, params)``;
    ``spectral()`` the rank chosen by ``energy``/``vbmf``.
    """
    geo = layer.geo
    if config.rule in ("energy", "vbmf"):
        return [spectral()]
    if config.rule == "macs_ratio":
        fitting = [r for r in ranks if cost(r)[0] <= config.layer_macs_ratio * geo.macs]
        return fitting[-1:]
    index = 0 if config.budget_kind == "macs" else 1
    full = geo.macs if index == 0 else geo.params
    chosen = []
    for ratio in _RATIO_GRID:
        if ratio > config.max_layer_macs_ratio:
            continue
        fitting = [r for r in ranks if cost(r)[index] <= ratio * full]
        if fitting and fitting[-1] not in chosen:
            chosen.append(fitting[-1])
    return chosen


def _svd_rank(
    weight: Tensor, whiten: Tensor | None, basis: SvdBasis, config: DecomposeConfig
) -> int:
    """Under ``energy``/``vbmf``: the rank of the matrix that is factored (``W``, or ``W L``)."""
    if config.rule == "energy":
        rank = energy_rank(basis.energy_spectrum(), config.energy)
    else:
        matrix = weight.reshape(weight.shape[0], -1).double()
        rank = evbmf_rank(matrix @ whiten if whiten is not None else matrix)
    return round_rank(rank, basis.max_rank, config.round_to)


def _spatial_rank(weight: Tensor, config: DecomposeConfig, limit: int) -> int:
    matrix = spatial_matrix(weight).double()
    if config.rule == "energy":
        rank = energy_rank(torch.linalg.svdvals(matrix).square(), config.energy)
    else:
        rank = evbmf_rank(matrix)
    return round_rank(rank, limit, config.round_to)


def _tucker_ranks(weight: Tensor, geo: LayerGeometry, config: DecomposeConfig) -> tuple[int, int]:
    w = weight.double()
    unfold_out = w.reshape(w.shape[0], -1)
    unfold_in = w.transpose(0, 1).reshape(w.shape[1], -1)
    limits = tucker2_rank_limits(geo)
    ranks = []
    for matrix, limit in zip((unfold_out, unfold_in), limits, strict=True):
        if config.rule == "energy":
            rank = energy_rank(torch.linalg.svdvals(matrix).square(), config.energy)
        else:
            rank = evbmf_rank(matrix)
        ranks.append(round_rank(rank, limit, config.round_to))
    return ranks[0], ranks[1]


def _tucker_pairs(geo: LayerGeometry, round_to: int) -> list[tuple[int, int]]:
    """``(r_out, r_in)`` pairs in the proportion of the two limits, by increasing cost."""
    lim_out, lim_in = tucker2_rank_limits(geo)
    pairs = {
        (r, round_rank(round(r * lim_in / lim_out), lim_in, round_to))
        for r in candidate_ranks(lim_out, round_to)
    }
    return sorted(pairs, key=lambda p: tucker2_cost(geo, p)[0])


def _cp_options(layer: _Layer, config: DecomposeConfig) -> list[Factorization]:
    geo, module = layer.geo, layer.module
    per_rank = cp_cost(geo, 1)[0] - cp_cost(geo, 0)[0]
    limit = max(1, geo.macs // max(per_rank, 1))
    ranks = _ranks_for(
        config,
        layer,
        candidate_ranks(limit, config.round_to),
        lambda r: cp_cost(geo, r),
        lambda: _cp_rank(layer, config),
    )
    options = []
    for rank in ranks:
        option, fit = cp_option(
            module,
            geo,
            rank,
            iterations=config.cp_iterations,
            tolerance=config.cp_tolerance,
            seed=config.seed,
            cov=layer.cov,
        )
        guarded = _degeneracy_guard(layer, option, fit, config)
        if guarded is not None:
            options.append(guarded)
    return options


def _cp_rank(layer: _Layer, config: DecomposeConfig) -> int:
    """Under ``energy``/``vbmf``: the CP rank as costly as Tucker-2 at the spectral ranks."""
    geo = layer.geo
    budget = tucker2_cost(geo, _tucker_ranks(layer.module.weight.detach(), geo, config))[0]
    per_rank = cp_cost(geo, 1)[0] - cp_cost(geo, 0)[0]
    rank = int(max(1, (budget - cp_cost(geo, 0)[0]) // max(per_rank, 1)))
    return rank if rank < 2 * config.round_to else rank // config.round_to * config.round_to


def _degeneracy_guard(
    layer: _Layer, option: Factorization, fit: CPFit, config: DecomposeConfig
) -> Factorization | None:
    if not fit.degenerate(config.cp_degeneracy_ratio):
        return option
    what = (
        f"CP rank {option.rank[0]} is degenerate: a rank-1 term's norm is "
        f"{fit.term_ratio:.3g}x the kernel's (> {config.cp_degeneracy_ratio})"
    )
    layer.notes.setdefault("cp_degenerate", []).append(
        {"rank": option.rank[0], "term_ratio": round(fit.term_ratio, 3)}
    )
    if config.cp_on_degenerate == "warn":
        warnings.warn(f"{layer.name}: {what}; kept (factor norms balanced)", stacklevel=4)
        option.notes["cp_degenerate"] = True
        return option
    if config.cp_on_degenerate == "keep":
        layer.notes["cp_fallback"] = f"{what}; dropped"
        return None
    pairs = [
        p
        for p in _tucker_pairs(layer.geo, config.round_to)
        if tucker2_cost(layer.geo, p)[0] <= option.macs
    ]
    if not pairs:
        layer.notes["cp_fallback"] = f"{what}; no Tucker-2 fits its MACs"
        return None
    fallback = tucker2_option(
        layer.module, layer.geo, pairs[-1], config.tucker_iterations, layer.cov
    )
    fallback.notes["fallback"] = f"{what}; Tucker-2 at the same MACs instead"
    return fallback


# --- choosing and gating ----------------------------------------------------------------------


def _speedup(layer: _Layer, option: Factorization, config: DecomposeConfig) -> float:
    if option.key not in layer.speedups:
        x = layer.example
        if config.gate_batch is not None and config.gate_batch != len(x):
            x = x[:1].repeat(config.gate_batch, *([1] * (x.dim() - 1)))
        layer.speedups[option.key] = measure_speedup(
            layer.module,
            option.build().eval(),
            x,
            seconds=config.gate_seconds,
            threads=config.gate_threads,
        )
    return layer.speedups[option.key]


def _passes(layer: _Layer, option: Factorization, config: DecomposeConfig) -> bool:
    if not config.speed_gate:
        return True
    return _speedup(layer, option, config) >= config.gate_min_speedup


def _too_big(layer: _Layer, option: Factorization, config: DecomposeConfig) -> bool:
    return option.macs > config.max_layer_macs_ratio * layer.geo.macs


def _choose_one(layer: _Layer, config: DecomposeConfig) -> None:
    """Per-layer rules: the lowest-error option that is cheap enough and measured faster."""
    if not layer.options:
        layer.reason = layer.notes.pop("cp_fallback", "no factorization fits the rank rule")
        return
    small = [o for o in layer.options if not _too_big(layer, o, config)]
    if not small:
        best = min(layer.options, key=lambda o: o.macs)
        layer.reason = (
            f"rank {_rank_text(best)} keeps {best.macs / layer.geo.macs:.0%} of the "
            f"MACs (> max_layer_macs_ratio {config.max_layer_macs_ratio})"
        )
        return
    for option in sorted(small, key=lambda o: o.error):
        if _passes(layer, option, config):
            layer.chosen = option
            layer.reason = "measured faster" if config.speed_gate else "speed gate off"
            return
    layer.reason = "not faster: " + ", ".join(
        f"{o.method} {_rank_text(o)} x{layer.speedups[o.key]:.2f}" for o in small
    )


def _choose_by_budget(
    model: nn.Module, example: Tensor, layers: list[_Layer], config: DecomposeConfig
) -> dict[str, Any]:
    """Global allocation under the budget, re-allocated while the gate rejects choices."""
    kind = config.budget_kind
    total = _model_cost(model, example, kind)
    target = config.target_macs if kind == "macs" else config.target_params
    assert target is not None
    budget = target * total
    index = 0 if kind == "macs" else 1
    fixed = total - sum(_full_cost(la.geo, index) for la in layers)
    live = {la.name: [o for o in la.options if not _too_big(la, o, config)] for la in layers}
    for _ in range(_GATE_ROUNDS):
        menus = [
            [(_full_cost(la.geo, index), 0.0)]
            + [(_cost(o, index), o.error**2) for o in live[la.name]]
            for la in layers
        ]
        picks, reached = allocate(menus, fixed, budget)
        rejected = False
        for layer, pick in zip(layers, picks, strict=True):
            layer.chosen = None if pick == 0 else live[layer.name][pick - 1]
            if layer.chosen is not None and not _passes(layer, layer.chosen, config):
                bad = layer.chosen
                live[layer.name] = [
                    o
                    for o in live[layer.name]
                    if not (o.method == bad.method and o.macs >= bad.macs)
                ]
                layer.chosen, rejected = None, True
        if not rejected:
            break
    for layer in layers:
        if layer.chosen is not None:
            layer.reason = "measured faster" if config.speed_gate else "speed gate off"
        elif layer.speedups:
            layer.reason = "not faster: " + ", ".join(
                f"{m} {'x'.join(map(str, r))} x{s:.2f}" for (m, r), s in layer.speedups.items()
            )
        elif not layer.options:
            layer.reason = layer.notes.pop("cp_fallback", "no factorization cuts its cost enough")
        else:
            layer.reason = "not needed for the budget"
    reached = fixed + sum(
        _cost(la.chosen, index) if la.chosen else _full_cost(la.geo, index) for la in layers
    )
    return {
        "budget": kind,
        "target": target,
        "reached": reached / total if total else 1.0,
        "met": reached <= budget,
    }


def _cost(option: Factorization, index: int) -> int:
    return option.macs if index == 0 else option.params


def _full_cost(geo: LayerGeometry, index: int) -> int:
    return geo.macs if index == 0 else geo.params


def _model_cost(model: nn.Module, example: Tensor, kind: str) -> int:
    if kind == "params":
        return count_params(model)[0]
    count = count_macs(model, example[:1])
    if count.macs is None:
        raise ConfigError(
            f"target_macs needs the model's MAC count, which failed: {count.note}; "
            "use target_params instead."
        )
    return count.macs


def _rank_text(option: Factorization) -> str:
    return "x".join(map(str, option.rank))


# --- result -----------------------------------------------------------------------------------


def _install(model: nn.Module, layers: list[_Layer]) -> None:
    for layer in layers:
        if layer.chosen is None:
            continue
        replacement = layer.chosen.build().train(layer.module.training)
        parent, _, child = layer.name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, replacement)


def _report(
    model: nn.Module,
    new: nn.Module,
    example: Tensor,
    layers: list[_Layer],
    skipped: dict[str, str],
    config: DecomposeConfig,
    summary: dict[str, Any],
) -> dict[str, Any]:
    rows = [_layer_row(layer) for layer in layers]
    rows += [{"layer": name, "kept": False, "reason": reason} for name, reason in skipped.items()]
    before, after = count_macs(model, example[:1]), count_macs(new, example[:1])
    return {
        "method": config.method,
        "rank": config.rule,
        "macs_before": before.macs,
        "macs_after": after.macs,
        "params_before": count_params(model)[0],
        "params_after": count_params(new)[0],
        **({"allocation": summary} if summary else {}),
        "layers": rows,
    }


def _layer_row(layer: _Layer) -> dict[str, Any]:
    option = layer.chosen or _best_shown(layer)
    row: dict[str, Any] = {"layer": layer.name, "kind": _kind(layer.geo)}
    if option is not None:
        speedup = layer.speedups.get(option.key)
        row |= {
            "method": option.method,
            "rank": list(option.rank),
            "weight_error": round(option.weight_error, 5),
            "activation_error": None
            if option.activation_error is None
            else round(option.activation_error, 5),
            "macs_ratio": round(option.macs / layer.geo.macs, 4),
            "params_ratio": round(option.params / layer.geo.params, 4),
            "speedup": None if speedup is None else round(speedup, 3),
        }
        row |= option.notes
    row |= {"kept": layer.chosen is not None, "reason": layer.reason, **layer.notes}
    return row


def _best_shown(layer: _Layer) -> Factorization | None:
    """For a layer left as it is: the option it was judged by (the last one timed, if any)."""
    timed = [o for o in layer.options if o.key in layer.speedups]
    return timed[-1] if timed else None


def _kind(geo: LayerGeometry) -> str:
    if geo.kind == "linear":
        return f"Linear {geo.in_ch}->{geo.out_ch}"
    return f"Conv2d {geo.kernel[0]}x{geo.kernel[1]} {geo.in_ch}->{geo.out_ch}"
