"""Runners: one way to execute a model per runtime, behind one small interface.

Everything in :mod:`slimkit.measure` measures a :class:`Runner`, so PyTorch eager, ONNX Runtime
or OpenVINO are timed by the same code. A runner also knows the size of the artifact it runs and
how to rebuild itself in a fresh process, where its peak RAM is measured.
"""

from __future__ import annotations

import abc
import importlib
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor, nn

from slimkit.errors import ConfigError
from slimkit.measure._counts import count_params
from slimkit.serialize import save_weights

__all__ = [
    "Runner",
    "RunnerSpec",
    "TorchEagerRunner",
    "as_runner",
    "get_runner",
    "list_runners",
    "register_runner",
]

_RUNNERS: dict[str, type[Runner]] = {}
R = TypeVar("R", bound="type[Runner]")


@dataclass(frozen=True)
class RunnerSpec:
    """A picklable recipe that rebuilds a runner in another process.

    Attributes:
        runner: Registered name of the runner class.
        module: Module that defines (and so registers) that class; the child imports it first.
        payload: Whatever the class's :meth:`Runner.from_spec` needs, for example an ``nn.Module``
            or the path of an ONNX file.
    """

    runner: str
    module: str
    payload: Any

    def build(self) -> Runner:
        """Import the runner's module and rebuild the runner from this spec."""
        importlib.import_module(self.module)
        return get_runner(self.runner).from_spec(self)


class Runner(abc.ABC):
    """Runs batches of one model on one runtime; the unit that slimkit measures.

    ``__call__`` must return only when the outputs are ready (synchronous), so that wall-clock
    timing around it is the real latency. Use a runner as a context manager to close it.

    Example:
        >>> import torch
        >>> with as_runner(torch.nn.Linear(4, 2)) as runner:
        ...     runner(torch.zeros(3, 4)).shape
        torch.Size([3, 2])
    """

    name: ClassVar[str] = "runner"

    @abc.abstractmethod
    def __call__(self, inputs: Tensor) -> Tensor:
        """Run one batch and return the outputs as a CPU torch tensor."""

    @abc.abstractmethod
    def artifact_size_bytes(self) -> int:
        """Size on disk of the serialized artifact this runner executes."""

    @abc.abstractmethod
    def child_spec(self) -> RunnerSpec:
        """A picklable recipe that rebuilds this runner in a child process (for peak RAM)."""

    @classmethod
    @abc.abstractmethod
    def from_spec(cls, spec: RunnerSpec) -> Runner:
        """Rebuild a runner from :meth:`child_spec`'s output (called in the child process)."""

    def close(self) -> None:  # noqa: B027  (optional hook: most runners hold nothing to release)
        """Release what the runner holds (sessions, temporary files, a model's training mode)."""

    def torch_module(self) -> nn.Module | None:
        """The PyTorch module behind this runner, if there is one (used to count MACs)."""
        return None

    def parameter_counts(self) -> tuple[int, int]:
        """Total and non-zero parameter counts; runners without a torch module must override."""
        module = self.torch_module()
        if module is None:
            raise NotImplementedError(
                f"{type(self).__name__} cannot count parameters without its module (opened from "
                "a file alone); runners of weights in a file count them there instead."
            )
        return count_params(module)

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def register_runner(name: str) -> Callable[[R], R]:
    """Register a :class:`Runner` class under ``name`` (also set as its ``name`` attribute).

    Example:
        >>> @register_runner("doc-identity")
        ... class IdentityRunner(TorchEagerRunner):
        ...     pass
        >>> "doc-identity" in list_runners()
        True
    """

    def deco(cls: R) -> R:
        if not (isinstance(cls, type) and issubclass(cls, Runner)):
            raise TypeError(f"@register_runner({name!r}) decorates Runner subclasses, not {cls!r}")
        previous = _RUNNERS.get(name)
        if previous is not None and _path(previous) != _path(cls):  # re-imports may re-register
            raise ConfigError(f"runner name {name!r} is already taken by {_path(previous)}.")
        cls.name = name
        _RUNNERS[name] = cls
        return cls

    return deco


def _path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def list_runners() -> list[str]:
    """Names of the registered runner classes."""
    return sorted(_RUNNERS)


def get_runner(name: str) -> type[Runner]:
    """The runner class registered under ``name``."""
    try:
        return _RUNNERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown runner {name!r}; registered runners: {list_runners()}."
        ) from None


@register_runner("torch-eager")
class TorchEagerRunner(Runner):
    """PyTorch eager execution of an ``nn.Module`` in eval mode under ``torch.inference_mode``.

    The module is switched to eval mode while the runner is open; :meth:`close` restores its
    previous mode. Its artifact is the safetensors file of its state dict.

    Example:
        >>> import torch
        >>> runner = TorchEagerRunner(torch.nn.Linear(4, 2))
        >>> runner.artifact_size_bytes() > 4 * 2 * 4
        True
        >>> runner.close()
    """

    def __init__(self, module: nn.Module) -> None:
        if not isinstance(module, nn.Module):
            raise ConfigError(f"TorchEagerRunner wraps an nn.Module, got {type(module).__name__}.")
        self.module = module
        self._was_training = module.training
        module.eval()

    def __call__(self, inputs: Tensor) -> Tensor:
        with torch.inference_mode():
            return _as_tensor(self.module(inputs))

    def artifact_size_bytes(self) -> int:
        with tempfile.TemporaryDirectory(prefix="slimkit-size-") as tmp:
            return save_weights(self.module, Path(tmp) / "model.safetensors").stat().st_size

    def child_spec(self) -> RunnerSpec:
        return RunnerSpec(runner=self.name, module=__name__, payload=self.module)

    @classmethod
    def from_spec(cls, spec: RunnerSpec) -> TorchEagerRunner:
        return cls(spec.payload)

    def torch_module(self) -> nn.Module:
        return self.module

    def close(self) -> None:
        self.module.train(self._was_training)


def as_runner(model_or_runner: nn.Module | Runner) -> Runner:
    """Return ``model_or_runner`` if it is a runner, else a :class:`TorchEagerRunner` around it.

    Example:
        >>> import torch
        >>> as_runner(torch.nn.Linear(4, 2)).name
        'torch-eager'
    """
    if isinstance(model_or_runner, Runner):
        return model_or_runner
    if isinstance(model_or_runner, nn.Module):
        return TorchEagerRunner(model_or_runner)
    raise ConfigError(
        f"expected an nn.Module or a slimkit.measure.Runner, got {type(model_or_runner).__name__}."
    )


def _as_tensor(out: Any) -> Tensor:
    # Hugging Face models return ModelOutput (a Mapping with .logits); others a tuple whose
    # first element is the prediction. Everything downstream needs one tensor.
    if isinstance(out, Tensor):
        return out
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, list | tuple) and out and isinstance(out[0], Tensor):
        return out[0]
    if isinstance(out, Mapping) and out and isinstance(next(iter(out.values())), Tensor):
        return next(iter(out.values()))
    raise ConfigError(
        f"the model returned {type(out).__name__}; slimkit needs a tensor of outputs."
    )
