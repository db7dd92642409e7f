"""PyTorch's own compiler (``torch.compile`` with the inductor backend) behind the Runner interface.

Inductor generates C++/OpenMP kernels for the CPU (it needs a C++ compiler on the machine); the
first call compiles, which :meth:`TorchCompileRunner.warm_up` does up front so that the compile
time is reported apart from the latency. A new batch size compiles again (once).

Freezing (on by default) lets inductor treat the weights as constants: it folds them into the
graph and prepacks them for oneDNN's matmul/convolution, which is where most of the gain over eager
comes from on a CPU (all-MiniLM-L6-v2 at sequence length 128, one thread, AVX2: 1.25-1.36x
eager at batch 1 frozen, 1.08x without; at batch 32 0.95-1.19x either way, within the noise).
It is meant for a trained model that no longer changes: build a new runner after changing the
weights.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
from torch import Tensor, nn

from slimkit.errors import ConfigError
from slimkit.measure._runner import RunnerSpec, TorchEagerRunner, _as_tensor, register_runner

__all__ = ["CompileMode", "TorchCompileRunner"]

CompileMode = Literal["default", "reduce-overhead", "max-autotune-no-cudagraphs"]


@register_runner("torch-compile")
class TorchCompileRunner(TorchEagerRunner):
    """Runs ``torch.compile(module)`` (inductor) in eval mode under ``torch.inference_mode``.

    Args:
        module: The model (not modified; compiled lazily on the first call).
        mode: ``torch.compile``'s mode.
        dynamic: Compile for dynamic shapes (one kernel for every batch size) instead of one
            specialization per batch size.
        freezing: Fold the weights into the compiled graph as constants (inference only).

    Example:
        >>> runner = TorchCompileRunner(torch.nn.Linear(4, 2))  # doctest: +SKIP
        >>> runner.warm_up(torch.zeros(1, 4)) > 0  # doctest: +SKIP
        True
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        mode: CompileMode = "default",
        dynamic: bool = False,
        freezing: bool = True,
    ) -> None:
        super().__init__(module)
        if mode not in ("default", "reduce-overhead", "max-autotune-no-cudagraphs"):
            raise ConfigError(
                f"unknown torch.compile mode {mode!r}; use one of 'default', 'reduce-overhead', "
                "'max-autotune-no-cudagraphs'."
            )
        self.mode, self.dynamic, self.freezing = mode, dynamic, freezing
        from torch._inductor import list_mode_options  # heavy: only once a runner is built

        # torch.compile takes a mode or inductor options, not both: spell the mode as options.
        options = {**list_mode_options(mode, dynamic), "freezing": freezing}
        self.compiled = torch.compile(module, dynamic=dynamic, fullgraph=False, options=options)

    def __call__(self, inputs: Tensor) -> Tensor:
        with torch.inference_mode():
            return _as_tensor(self.compiled(inputs))

    def warm_up(self, inputs: Tensor) -> float:
        """Compile for ``inputs``' shape now; returns the seconds it took."""
        start = time.perf_counter()
        self(inputs)
        return time.perf_counter() - start

    def child_spec(self) -> RunnerSpec:
        payload: dict[str, Any] = {
            "module": self.module,
            "mode": self.mode,
            "dynamic": self.dynamic,
            "freezing": self.freezing,
        }
        return RunnerSpec(runner=self.name, module=__name__, payload=payload)

    @classmethod
    def from_spec(cls, spec: RunnerSpec) -> TorchCompileRunner:
        payload = dict(spec.payload)
        return cls(payload.pop("module"), **payload)
