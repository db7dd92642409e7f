"""AOTInductor: the model compiled ahead of time into a shared library inside a ``.pt2`` package.

``torch._inductor.aoti_compile_and_package`` turns the captured graph (the same
:func:`slimkit.graph.capture`, batch dimension dynamic) into C++ kernels with the weights frozen
in; :class:`AotInductorRunner` loads the package with ``aoti_load_package`` and calls it without
``torch.compile``'s Python guards. It is the serving route for users who stay in PyTorch: a C++
server loads the same file with ``AOTIModelPackageLoader``, no Python needed. Measured with
``benchmarks/compile_backends.py`` (one thread) on the trained fmnist_resnet after the fusion
passes: on an AVX-512 EPYC 1.54x eager at batch 1 and 1.20x at batch 64 (``torch.compile``:
1.29x and 1.17x), 6 s to build; on an AVX2 EPYC 1.15x and 1.65x (``torch.compile``: 0.88x and
1.64x; its guards cost more than they save at batch 1).

A package holds native code: load only packages you built or trust.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from slimkit._io import atomic_path
from slimkit.compile._backend_common import as_config, dynamic_batch_example, remove_folder
from slimkit.config import Config
from slimkit.errors import ConfigError
from slimkit.graph import capture
from slimkit.measure._runner import Runner, RunnerSpec, _as_tensor, register_runner

__all__ = ["AotInductorConfig", "AotInductorRunner", "build_runner"]


class AotInductorConfig(Config):
    """Options of the AOTInductor backend.

    Attributes:
        path: Where to write the package (``.pt2``); by default a temporary file that the
            runner deletes when closed.
        dynamic_batch: Compile for any batch size (else only the example's).
        freezing: Fold the weights into the compiled code as constants (inference only).

    Example:
        >>> AotInductorConfig().freezing
        True
    """

    path: Path | None = None
    dynamic_batch: bool = True
    freezing: bool = True


@register_runner("torch-aoti")
class AotInductorRunner(Runner):
    """Runs an AOTInductor package (``.pt2``) under ``torch.inference_mode``.

    Args:
        path: The package, as :func:`build_runner` or ``aoti_compile_and_package`` writes it.

    Example:
        >>> runner = AotInductorRunner("model.aoti.pt2")  # doctest: +SKIP
        >>> runner(torch.zeros(1, 1, 28, 28)).shape  # doctest: +SKIP
        torch.Size([1, 10])
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise ConfigError(f"no AOTInductor package at {self.path}.")
        try:
            self._compiled: Any = torch._inductor.aoti_load_package(str(self.path))
        except Exception as exc:
            raise ConfigError(
                f"cannot load the AOTInductor package {self.path.name}: {exc}"
            ) from exc
        self._module: nn.Module | None = None
        self._owned_dir: Path | None = None

    def __call__(self, inputs: Tensor) -> Tensor:
        if self._compiled is None:
            raise ConfigError(f"this runner of {self.path.name} was closed; open a new one.")
        with torch.inference_mode():
            return _as_tensor(self._compiled(inputs.contiguous()))

    def artifact_size_bytes(self) -> int:
        return self.path.stat().st_size

    def torch_module(self) -> nn.Module | None:
        return self._module

    def child_spec(self) -> RunnerSpec:
        return RunnerSpec(
            runner=self.name, module=__name__, payload={"path": str(self.path.resolve())}
        )

    @classmethod
    def from_spec(cls, spec: RunnerSpec) -> AotInductorRunner:
        return cls(spec.payload["path"])

    def close(self) -> None:
        self._compiled = None
        remove_folder(self._owned_dir)
        self._owned_dir = None

    def __repr__(self) -> str:
        return f"AotInductorRunner({str(self.path)!r})"


def build_runner(
    model: nn.Module,
    example_inputs: Tensor,
    onnx_path: Path | None = None,
    options: AotInductorConfig | dict[str, Any] | None = None,
) -> AotInductorRunner:
    """Capture ``model``, compile it with AOTInductor into a package, and open it.

    ``onnx_path`` is not used: AOTInductor starts from the PyTorch module.

    Raises:
        CaptureError: ``torch.export`` cannot capture the model (the message says why).
        ConfigError: Inductor failed to compile the graph (the message has its first line).
    """
    config = as_config(options, AotInductorConfig)
    example = dynamic_batch_example(example_inputs) if config.dynamic_batch else example_inputs
    program = capture(model, example, (0,) if config.dynamic_batch else ()).program
    owned = config.path is None
    folder = Path(tempfile.mkdtemp(prefix="slimkit-aoti-")) if owned else None
    path = folder / "model.aoti.pt2" if folder is not None else config.path
    assert path is not None
    try:
        try:
            with atomic_path(path, suffix=".tmp.pt2") as tmp:  # the packager wants a .pt2 name
                torch._inductor.aoti_compile_and_package(
                    program,
                    package_path=str(tmp),
                    inductor_configs={"freezing": config.freezing},
                )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ConfigError(
                f"AOTInductor could not compile {type(model).__name__}: {type(exc).__name__}: "
                f"{first}"
            ) from exc
        runner = AotInductorRunner(path)
    except BaseException:
        remove_folder(folder)
        raise
    runner._owned_dir = folder
    runner._module = model
    return runner
