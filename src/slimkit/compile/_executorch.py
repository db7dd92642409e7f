"""ExecuTorch with the XNNPACK delegate behind slimkit's :class:`~slimkit.measure.Runner`.

ExecuTorch is PyTorch's on-device route (what TFLite is for TensorFlow): :func:`export_pte`
captures the model with ``torch.export`` (dynamic batch up to a bound), lowers the operations
XNNPACK supports to its delegate (``to_edge_transform_and_lower`` with the
``XnnpackPartitioner``) and writes a ``.pte`` program, atomically. With calibration inputs it
quantizes first, with XNNPACK's own PT2E quantizer (int8: per-channel symmetric weights,
per-tensor activations calibrated on real samples), so XNNPACK runs its int8 kernels; this is
ExecuTorch's documented int8 route, not slimkit's ONNX quantizer. :class:`ExecuTorchRunner`
runs that file with ExecuTorch's runtime (the pybindings of the C++ runtime, the same program a
phone would load); its artifact is the ``.pte`` file.

Two facts measured with executorch 1.5.1 and torch 2.14.1 shape this module:

- torch's fake convolution kernel guards on ``batch >= 16`` while XNNPACK's passes re-run the
  graph, which narrows the batch range of the program to ``[2, 15]`` and plans memory for 15
  samples; :func:`export_pte` restores the exported range before memory planning, so the
  program accepts every batch up to ``max_batch`` (checked against PyTorch in the tests).
- ExecuTorch's runtime has one process-wide thread pool; the runner sets its size to
  ``threads`` (and sets it again before a call if another runner changed it).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

from slimkit._io import atomic_path
from slimkit._optional import require
from slimkit._runtime import log
from slimkit.compile._backend_common import (
    as_config,
    check_calibration,
    check_threads,
    dynamic_batch_example,
    remove_folder,
)
from slimkit.config import Config
from slimkit.errors import ConfigError
from slimkit.measure._runner import Runner, RunnerSpec, _as_tensor, register_runner

__all__ = ["ExecuTorchConfig", "ExecuTorchRunner", "build_runner", "export_pte"]

# Graph nodes that are plumbing, not operators a runtime must implement.
_PLUMBING = {"executorch_call_delegate", "getitem", "sym_size"}


class ExecuTorchConfig(Config):
    """Options of the ExecuTorch (XNNPACK) backend.

    Attributes:
        threads: Size of ExecuTorch's (process-wide) thread pool while the runner runs.
        dynamic_batch: Export with a dynamic batch dimension (else the example's batch only).
        max_batch: Largest batch the program runs in one call: ExecuTorch plans its memory
            ahead for this many samples; the runner splits larger batches into such chunks.
        path: Where to write the ``.pte`` file; by default a temporary file that the runner
            deletes when closed.
        int8: Quantize with XNNPACK's quantizer before lowering (needs calibration inputs).

    Example:
        >>> ExecuTorchConfig().max_batch
        256
    """

    threads: int = Field(default=1, ge=1)
    dynamic_batch: bool = True
    max_batch: int = Field(default=256, ge=1)
    path: Path | None = None
    int8: bool = False


def export_pte(
    model: nn.Module,
    example_inputs: Tensor,
    path: str | os.PathLike[str],
    *,
    dynamic_batch: bool = True,
    max_batch: int = 256,
    calibration: Tensor | None = None,
) -> tuple[Path, list[str]]:
    """Export ``model`` to an ExecuTorch ``.pte`` program with the XNNPACK delegate.

    Args:
        model: The module; exported in eval mode (its mode is restored).
        example_inputs: One batch of inputs (its batch size must be at most ``max_batch``).
        path: The ``.pte`` file to write (atomically).
        dynamic_batch: Make dim 0 dynamic, from 1 to ``max_batch``.
        max_batch: Upper bound of the batch (memory is planned for it).
        calibration: Real input samples: when given, the model is quantized to int8 with
            XNNPACK's PT2E quantizer (per-channel symmetric weights, activation ranges
            observed on these samples) before lowering.

    Returns:
        The path, and the operators left outside the XNNPACK delegate (run by ExecuTorch's
        portable kernels), by name; empty when XNNPACK runs the whole graph.

    Raises:
        MissingDependencyError: ExecuTorch is not installed.
        ConfigError: ``torch.export`` cannot capture the model, lowering fails, or the model
            uses an operator that this ExecuTorch runtime has no kernel for (named).
        DataError: ``calibration`` is empty, not finite or not shaped like the example.

    Example:
        >>> from slimkit.models import create_model
        >>> net = create_model("fmnist_tiny")
        >>> export_pte(net, torch.zeros(2, 1, 28, 28), "tiny.pte")  # doctest: +SKIP
        (PosixPath('tiny.pte'), [])
    """
    require("executorch", "executorch", "exporting to ExecuTorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    if not isinstance(model, nn.Module):
        raise ConfigError(f"export_pte exports an nn.Module, got {type(model).__name__}.")
    if not isinstance(example_inputs, Tensor) or example_inputs.dim() == 0:
        raise ConfigError("example_inputs must be a tensor with a batch dimension.")
    batch = int(example_inputs.shape[0])
    if dynamic_batch and not 1 <= batch <= max(max_batch, 2):
        raise ConfigError(f"the example batch ({batch}) must be between 1 and max_batch.")
    if calibration is not None:
        check_calibration(calibration, tuple(example_inputs.shape[1:]))
    # The bound is at least 2: torch.export cannot make a dimension of at most 1 dynamic.
    bound = max(max_batch, 2)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=bound)},) if dynamic_batch else None
    with _eval_mode(model):
        try:
            example = dynamic_batch_example(example_inputs) if dynamic_batch else example_inputs
            program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
        except Exception as exc:
            raise ConfigError(
                f"torch.export cannot capture {type(model).__name__} for ExecuTorch: "
                f"{_first_line(exc)}"
            ) from exc
    if calibration is not None:
        program = _quantized(program, example, dynamic, calibration, bound)
    ranges = dict(program.range_constraints)
    try:
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        _restore_ranges(program, ranges)
        fallback = _fallback_ops(edge.exported_program())
        _check_kernels(fallback)
        executorch_program = edge.to_executorch()
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"lowering to ExecuTorch/XNNPACK failed: {_first_line(exc)}") from exc
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        executorch_program.write_to_file(f)
    return target, fallback


def _quantized(program: Any, example: Tensor, dynamic: Any, calibration: Tensor,
               batch: int) -> Any:  # fmt: skip
    """``program`` quantized by XNNPACK's PT2E quantizer and exported again."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True)
    )
    try:
        observed = prepare_pt2e(program.module(), quantizer)
        with torch.no_grad():
            for start in range(0, len(calibration), batch):
                # The example's dtype: float images, but integer token ids stay integers.
                observed(calibration[start : start + batch].to(example.dtype))
        quantized = convert_pt2e(observed)
        return torch.export.export(quantized, (example,), dynamic_shapes=dynamic)
    except Exception as exc:
        raise ConfigError(f"XNNPACK int8 quantization failed: {_first_line(exc)}") from exc


@register_runner("executorch")
class ExecuTorchRunner(Runner):
    """Runs an ExecuTorch ``.pte`` program with ExecuTorch's runtime (XNNPACK delegate).

    Args:
        path: The ``.pte`` file (method ``forward``, one input; the first output is returned).
        threads: Size of ExecuTorch's process-wide thread pool for this runner's calls.

    Attributes:
        max_batch: The largest batch the program runs in one call (its planned input size);
            larger batches are run in chunks of this size.
        fallback_ops: Operators outside the XNNPACK delegate (set by :func:`build_runner`;
            ``None`` when the runner was opened from a file).

    Example:
        >>> runner = ExecuTorchRunner("tiny.pte", threads=1)  # doctest: +SKIP
        >>> runner(torch.zeros(1, 1, 28, 28)).shape  # doctest: +SKIP
        torch.Size([1, 10])
    """

    def __init__(self, path: str | os.PathLike[str], *, threads: int = 1) -> None:
        require("executorch", "executorch", "the ExecuTorch runner")
        from executorch.runtime import Runtime

        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"no ExecuTorch program at {self.path}.")
        self.threads = check_threads(threads)
        self._set_threads()
        try:
            program = Runtime.get().load_program(self.path)
            self._method = program.load_method("forward")
        except Exception as exc:
            raise ConfigError(
                f"ExecuTorch cannot load {self.path.name}: {_first_line(exc)}"
            ) from exc
        self._program = program  # the method refers to the program's memory
        meta = self._method.metadata
        if meta.num_inputs() != 1:
            raise ConfigError(
                f"{self.path.name} takes {meta.num_inputs()} inputs; slimkit runners feed one."
            )
        self.input_shape = tuple(meta.input_tensor_meta(0).sizes())
        self.max_batch = int(self.input_shape[0]) if self.input_shape else 1
        self.fallback_ops: list[str] | None = None
        self._owned_dir: Path | None = None
        self._module: nn.Module | None = None

    def __call__(self, inputs: Tensor) -> Tensor:
        if self._method is None:
            raise ConfigError(f"this runner of {self.path.name} was closed; open a new one.")
        if inputs.dim() and inputs.shape[0] > self.max_batch:
            # The program's memory is planned for max_batch samples: larger batches run in
            # chunks of that size (export with a larger max_batch to run them in one call).
            return torch.cat([self(chunk) for chunk in inputs.split(self.max_batch)])
        self._set_threads()
        x = inputs.detach().cpu().contiguous()
        if x.dtype != torch.float32 and x.is_floating_point():
            x = x.float()
        outputs = self._method.execute((x,))
        return _as_tensor(outputs)

    def _set_threads(self) -> None:
        from executorch.extension.pybindings import portable_lib

        if portable_lib._threadpool_get_thread_count() != self.threads:
            portable_lib._unsafe_reset_threadpool(self.threads)

    def artifact_size_bytes(self) -> int:
        return self.path.stat().st_size

    def torch_module(self) -> nn.Module | None:
        return self._module

    def child_spec(self) -> RunnerSpec:
        payload = {"path": str(self.path.resolve()), "threads": self.threads}
        return RunnerSpec(runner=self.name, module=__name__, payload=payload)

    @classmethod
    def from_spec(cls, spec: RunnerSpec) -> ExecuTorchRunner:
        payload: dict[str, Any] = dict(spec.payload)
        return cls(payload.pop("path"), **payload)

    def close(self) -> None:
        self._method = None
        self._program = None
        remove_folder(self._owned_dir)
        self._owned_dir = None

    def __repr__(self) -> str:
        return f"ExecuTorchRunner({str(self.path)!r}, threads={self.threads})"


def build_runner(
    model: nn.Module,
    example_inputs: Tensor,
    onnx_path: Path | None,
    options: ExecuTorchConfig | dict[str, Any] | None = None,
    calibration: Tensor | None = None,
) -> ExecuTorchRunner:
    """Export ``model`` to a ``.pte`` (XNNPACK) and open it, for backend selection.

    ``onnx_path`` is not used: ExecuTorch starts from the PyTorch module. With ``options.int8``
    the model is quantized first, calibrated on ``calibration``.

    Raises:
        MissingDependencyError: ExecuTorch is not installed (one line with the install command).
        ConfigError: See :func:`export_pte`; ``int8`` without calibration inputs.
        DataError: See :func:`export_pte`.
    """
    config = as_config(options, ExecuTorchConfig)
    require("executorch", "executorch", "the ExecuTorch backend")
    if config.int8 and calibration is None:
        raise ConfigError(
            "ExecuTorch int8 needs calibration inputs (a few hundred real samples): pass "
            "calibration=, or set int8: false."
        )
    owned = config.path is None
    folder = Path(tempfile.mkdtemp(prefix="slimkit-et-")) if owned else None
    path = folder / "model.pte" if folder is not None else config.path
    assert path is not None
    try:
        path, fallback = export_pte(model, example_inputs, path,
                                    dynamic_batch=config.dynamic_batch,
                                    max_batch=config.max_batch,
                                    calibration=calibration if config.int8 else None)  # fmt: skip
        runner = ExecuTorchRunner(path, threads=config.threads)
    except BaseException:
        remove_folder(folder)
        raise
    if fallback:
        log(f"executorch: outside the XNNPACK delegate (portable kernels): {', '.join(fallback)}")
    runner.fallback_ops = fallback
    runner._owned_dir = folder
    runner._module = model
    return runner


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _restore_ranges(program: Any, ranges: dict[Any, Any]) -> None:
    # See the module docstring: a guard in torch's fake conv kernel narrows the batch range
    # while XNNPACK lowers; the graph itself is not specialized ("ignored guard"), so the
    # exported range is put back before memory planning reads it.
    for node in program.graph.nodes:
        value = node.meta.get("val")
        shape = getattr(value, "shape", None)
        for dim in shape or ():
            env = getattr(getattr(dim, "node", None), "shape_env", None)
            if env is not None:
                for symbol, value_range in ranges.items():
                    if symbol in env.var_to_range:
                        env.var_to_range[symbol] = value_range
                return


def _fallback_ops(program: Any) -> list[str]:
    names = set()
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", str(node.target))
        if name.split(".")[0] in _PLUMBING:
            continue
        names.add(_op_name(node.target))
    return sorted(names)


def _op_name(target: Any) -> str:
    # Python arithmetic on symbolic sizes (operator.mul on a dynamic batch, ...) is emitted as
    # ExecuTorch's own prim ops; name it as the runtime registers it.
    target = _symbolic_ops().get(target, target)
    # Edge ops print as "aten.add.Tensor"; the runtime registers "aten::add.Tensor".
    text = str(getattr(target, "_name", None) or target)
    if "::" in text:
        return text
    parts = text.split(".")
    if len(parts) >= 2:
        return f"{parts[0]}::{'.'.join(parts[1:])}"
    return text


def _symbolic_ops() -> dict[Any, Any]:
    try:
        from executorch.exir.passes import executorch_prim_ops_registry as prims
    except ImportError:
        return {}
    return dict(getattr(prims, "_PYTHON_SYM_OPS_TO_EXECUTORCH_SYM_OPS", {}))


def _check_kernels(ops: list[str]) -> None:
    if not ops:
        return
    from executorch.runtime import Runtime

    # The runtime registers out-variants ("aten::add.out") of the edge ops ("aten::add.Tensor"):
    # an operator is there when any overload of its name is.
    registered = {name.split(".")[0] for name in Runtime.get().operator_registry.operator_names}
    missing = [op for op in ops if op.split(".")[0] not in registered]
    if missing:
        raise ConfigError(
            f"this ExecuTorch runtime has no kernel for {', '.join(missing)} (not delegated to "
            "XNNPACK either); replace the operation in the model or use another backend."
        )


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
