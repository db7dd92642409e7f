"""ONNX Runtime behind slimkit's :class:`~slimkit.measure.Runner` interface.

An :class:`OnnxRuntimeRunner` runs one ``.onnx`` file (fp32, fp16 or int8) on the CPU execution
provider with an explicit number of intra-op threads, so that ``slimkit.profile`` and
``slimkit.compare`` measure it exactly as they measure a PyTorch model: same timing code, size
on disk (the file), peak RAM in a fresh child process (rebuilt from the file's path).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from slimkit._optional import require
from slimkit.compile._backend_common import onnx_parameter_counts
from slimkit.compile._onnx import onnx_input_dtype
from slimkit.errors import ConfigError
from slimkit.measure._runner import Runner, RunnerSpec, register_runner

__all__ = ["OnnxRuntimeRunner", "OptimizationLevel"]

OptimizationLevel = Literal["disable", "basic", "extended", "all"]

_LEVELS = {
    "disable": "ORT_DISABLE_ALL",
    "basic": "ORT_ENABLE_BASIC",
    "extended": "ORT_ENABLE_EXTENDED",
    "all": "ORT_ENABLE_ALL",
}


@register_runner("onnxruntime")
class OnnxRuntimeRunner(Runner):
    """Runs an ONNX file with ONNX Runtime on the CPU; outputs come back as CPU torch tensors.

    Args:
        path: The ``.onnx`` file (one input, e.g. images or token ids; the first output is
            returned).
        threads: Intra-op threads of the session. Set it to the ``ProfileConfig.threads`` of the
            measurement: ONNX Runtime has its own thread pool, which torch's setting does not
            reach.
        optimization_level: ONNX Runtime's graph optimization level (``"all"`` includes the
            layout and int8 fusions that make QDQ models fast).
        providers: Execution providers, in order of preference.

    Example:
        >>> runner = OnnxRuntimeRunner("model.onnx", threads=1)  # doctest: +SKIP
        >>> runner(torch.zeros(1, 1, 28, 28)).shape  # doctest: +SKIP
        torch.Size([1, 10])
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        threads: int = 1,
        optimization_level: OptimizationLevel = "all",
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        ort = require("onnxruntime", "onnx", "the onnxruntime runner")
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"no ONNX file at {self.path}.")
        if threads < 1:
            raise ConfigError(f"threads must be >= 1, got {threads}.")
        if optimization_level not in _LEVELS:
            raise ConfigError(
                f"optimization_level must be one of {sorted(_LEVELS)}, got {optimization_level!r}."
            )
        self.threads = threads
        self.optimization_level: OptimizationLevel = optimization_level
        self.providers = tuple(providers)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # One model, one request at a time: no parallelism between nodes, so the thread count
        # stated in the report is the number of cores the runner uses.
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel, _LEVELS[optimization_level]
        )
        try:
            self.session = ort.InferenceSession(
                str(self.path), options, providers=list(self.providers)
            )
        except Exception as exc:
            raise ConfigError(f"ONNX Runtime cannot load {self.path}: {exc}") from exc
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            names = [i.name for i in inputs]
            raise ConfigError(
                f"{self.path.name} has {len(inputs)} inputs {names}; slimkit runners feed one "
                "tensor (export the model with a single input)."
            )
        self.input_name: str = inputs[0].name
        self.input_dtype = onnx_input_dtype(inputs[0].type)
        self.output_name: str = self.session.get_outputs()[0].name

    def __call__(self, inputs: Tensor) -> Tensor:
        if self.session is None:
            raise ConfigError(f"this runner of {self.path.name} was closed; open a new one.")
        array = inputs.detach().cpu().numpy()
        if array.dtype != self.input_dtype:
            array = array.astype(self.input_dtype)
        (out,) = self.session.run([self.output_name], {self.input_name: array})
        return torch.from_numpy(np.asarray(out))

    def artifact_size_bytes(self) -> int:
        return self.path.stat().st_size + sum(p.stat().st_size for p in self._external_files())

    def parameter_counts(self) -> tuple[int, int]:
        """Elements of the weight initializers (floats, int8 weights, int32 biases).

        Quantization parameters (``*_scale``, ``*_zero_point``), scalars and int64 shape
        constants are not counted.
        """
        return onnx_parameter_counts(self.path)

    def child_spec(self) -> RunnerSpec:
        payload = {
            "path": str(self.path.resolve()),
            "threads": self.threads,
            "optimization_level": self.optimization_level,
            "providers": list(self.providers),
        }
        return RunnerSpec(runner=self.name, module=__name__, payload=payload)

    @classmethod
    def from_spec(cls, spec: RunnerSpec) -> OnnxRuntimeRunner:
        payload: dict[str, Any] = dict(spec.payload)
        return cls(payload.pop("path"), **payload)

    def close(self) -> None:
        # Drop the session: its arena holds the weights and the activations of the last batch.
        self.session = None  # type: ignore[assignment]

    def _external_files(self) -> list[Path]:
        # Models over 2 GB keep their weights in side files; they belong to the artifact too.
        onnx = require("onnx", "onnx", "reading an ONNX model")
        model = onnx.load(str(self.path), load_external_data=False)
        locations = set()
        for init in model.graph.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                entries = {e.key: e.value for e in init.external_data}
                locations.add(entries["location"])
        return [self.path.parent / loc for loc in sorted(locations)]

    def __repr__(self) -> str:
        return (
            f"OnnxRuntimeRunner({str(self.path)!r}, threads={self.threads}, "
            f"optimization_level={self.optimization_level!r})"
        )
