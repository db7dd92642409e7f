"""Data-aware (activation-whitened) SVD beats plain SVD at the same rank on real activations."""

from __future__ import annotations

import torch
from torch import nn

from slimkit.decompose import DecomposeConfig, decompose, decomposition_report

LAYERS = ("fc", "stages.2.0.shortcut.0", "stages.2.0.conv2", "stages.1.0.conv1")


def _inputs(model: nn.Module, names: tuple[str, ...], x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen: dict[str, torch.Tensor] = {}
    handles = [
        model.get_submodule(n).register_forward_hook(
            lambda m, args, out, n=n: seen.__setitem__(n, args[0].detach())
        )
        for n in names
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return seen


def test_whitened_svd_has_lower_activation_error_on_held_out_images(
    resnet_one_epoch: nn.Module, fmnist_small
) -> None:
    model = resnet_one_epoch
    calib = fmnist_small.calibration_inputs(256)
    held_out = fmnist_small.test_inputs[:200]  # not calibration data
    results = {}
    for aware in (False, True):
        config = DecomposeConfig(
            method="svd",
            layers=LAYERS,
            layer_macs_ratio=0.3,
            speed_gate=False,
            data_aware=aware,
            calibration_samples=256,
        )
        results[aware] = decompose(model, config, held_out[:1], calib=calib)
    rows = {
        a: {r["layer"]: r for r in decomposition_report(m)["layers"]} for a, m in results.items()
    }
    inputs = _inputs(model, LAYERS, held_out)
    with torch.no_grad():
        for name in LAYERS:
            assert rows[True][name]["rank"] == rows[False][name]["rank"]
            assert rows[True][name]["data_aware"] and "data_aware" not in rows[False][name]
            x, original = inputs[name], model.get_submodule(name)
            reference = original(x)
            errors = {
                a: float((m.get_submodule(name)(x) - reference).norm() / reference.norm())
                for a, m in results.items()
            }
            assert errors[True] < errors[False], (name, errors)
            # The report's calibration error says the same.
            assert rows[True][name]["activation_error"] < rows[False][name]["activation_error"]
        logits = model(held_out)
        drift = {a: float((m(held_out) - logits).norm()) for a, m in results.items()}
    assert drift[True] < drift[False]
