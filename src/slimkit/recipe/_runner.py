"""The recipe runner: build, measure, then apply and measure each step, writing as it goes."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from slimkit._runtime import log, progress_enabled, seed_everything, set_progress
from slimkit.data import DataSplits, load_dataset
from slimkit.env import collect_env
from slimkit.measure import Runner, compare, profile
from slimkit.models import create_model
from slimkit.recipe._output import RunFolder
from slimkit.recipe._report import Stage, build_report, jsonable, lookup
from slimkit.recipe._schema import ModelRef, Recipe, Step, load_recipe
from slimkit.recipe._steps import StepContext, StepOutput, get_step
from slimkit.serialize import load_model


@dataclass
class RunResult:
    """The outcome of :func:`run_recipe`.

    Attributes:
        model: The final model (also saved in ``out_dir/model``).
        stages: The baseline, then one :class:`Stage` per step.
        out_dir: The output folder.
        report: The content of ``report.json``.
    """

    model: nn.Module
    stages: list[Stage]
    out_dir: Path
    report: dict[str, Any]


def run_recipe(
    recipe: Recipe | str | Path,
    out_dir: str | Path,
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> RunResult:
    """Run a recipe: measure the starting model, then apply and measure each step in order.

    Writes ``out_dir`` as described in :mod:`slimkit.recipe._output`; the report is rewritten
    after every step, so a run stopped half-way leaves the finished steps' outputs valid. When a
    step fails, the report records the error and the exception is re-raised.

    Args:
        recipe: A validated :class:`Recipe`, or a recipe file or YAML text for :func:`load_recipe`.
        out_dir: The output folder; created if missing.
        progress: Print one line per step (and the steps' own progress); ``False`` silences it.
        overwrite: Replace the outputs of an earlier run in ``out_dir`` instead of refusing.

    Raises:
        FileExistsError: ``out_dir`` holds an earlier run and ``overwrite`` is false.

    Example:
        >>> recipe = load_recipe('''
        ... model: fmnist_tiny
        ... data: {name: fashion-mnist, train_subset: 512, test_subset: 256}
        ... profile: {threads: 1, memory: false, max_seconds: 0.1}
        ... steps:
        ...   - train: {epochs: 1}
        ... ''')
        >>> import tempfile
        >>> result = run_recipe(recipe, tempfile.mkdtemp(), progress=False)  # doctest: +SKIP
        >>> [stage.name for stage in result.stages]  # doctest: +SKIP
        ['baseline', 'train']
    """
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    folder = RunFolder(out_dir)
    folder.prepare(overwrite)
    with _progress_shown(progress):
        return _Run(recipe, folder).execute()


@contextmanager
def _progress_shown(show: bool) -> Iterator[None]:
    # False silences the run; True keeps the process setting (SLIMKIT_PROGRESS=0 still wins).
    before = progress_enabled()
    set_progress(before and show)
    try:
        yield
    finally:
        set_progress(before)


class _Run:
    def __init__(self, recipe: Recipe, folder: RunFolder) -> None:
        self.recipe, self.folder = recipe, folder
        self.env = collect_env()
        self.stages: list[Stage] = []

    def execute(self) -> RunResult:
        self.folder.write_recipe(self.recipe)
        self.folder.write_env(self.env)
        try:
            model = self._run_steps()
            self.folder.save_model(model, self.folder.model_dir)
        except BaseException as exc:
            status = "failed" if isinstance(exc, Exception) else "interrupted"
            self._write_report(status, error=self._describe(exc))
            raise
        report = self._write_report("complete")
        log(f"done: {len(self.recipe.steps)} step(s); report in {self.folder.root / 'report.md'}")
        return RunResult(model, self.stages, self.folder.root, report)

    def _run_steps(self) -> nn.Module:
        seed_everything(self.recipe.seed)
        # The model first: building it is cheap and catches wrong kwargs before the data loads.
        model = _build_model(self.recipe.model)
        data = load_dataset(self.recipe.data)
        self.baseline = model
        self._add_stage(Stage("baseline", 0, None, 0.0, _profile(model, data, self.recipe)))
        models_before: list[tuple[str, nn.Module]] = []
        artifact: Runner | None = None
        for index, step in enumerate(self.recipe.steps, start=1):
            output = self._run_step(index, step, model, data, tuple(models_before), artifact)
            models_before.append((step.name, model))
            model, artifact = output.model, output.artifact
        return model

    def _run_step(
        self,
        index: int,
        step: Step,
        model: nn.Module,
        data: DataSplits,
        models_before: tuple[tuple[str, nn.Module], ...],
        artifact_before: Runner | None,
    ) -> StepOutput:
        total = len(self.recipe.steps)
        log(f"[{index}/{total}] {step.name}: starting")
        step_dir = self.folder.step_dir(index, step.name)
        ctx = StepContext(
            data=data,
            seed=self.recipe.seed,
            step_dir=step_dir,
            models_before=models_before,
            recipe=self.recipe,
            index=index,
            name=step.name,
            artifact_before=artifact_before,
        )
        # Each step starts from a known RNG state, whatever the earlier steps consumed.
        seed_everything(self.recipe.seed + index)
        start = time.perf_counter()
        # The handler gets a copy: models_before must keep the models exactly as they were.
        handler = get_step(step.name).handler
        output = _as_output(handler(copy.deepcopy(model), step.config, ctx), step.name)
        seconds = time.perf_counter() - start
        self.folder.save_model(output.model, step_dir)
        config = step.config.model_dump(mode="json")
        stage = Stage(step.name, index, config, seconds, {}, jsonable(output.info))
        if output.artifact is None:
            stage.profile, stage.vs_baseline = _compare(
                self.baseline, output.model, data, self.recipe
            )
        else:
            # An artifact for another runtime is timed against the float model on that same
            # runtime: a speed-up over PyTorch eager would mix the runtime's gain with the step's.
            against = output.reference if output.reference is not None else self.baseline
            stage.profile, stage.vs_baseline = _compare(against, output.artifact, data, self.recipe)
            stage.runtime = output.artifact.name
            if output.reference is not None:
                stage.speedup_against = f"the float model on {output.reference.name}"
        self._add_stage(stage)
        return output

    def _add_stage(self, stage: Stage) -> None:
        self.stages.append(stage)
        self._write_report("running")
        log(_stage_line(stage, len(self.recipe.steps)))

    def _write_report(self, status: str, error: str | None = None) -> dict[str, Any]:
        report = build_report(self.recipe.to_dict(), self.stages, self.env, status, error)
        self.folder.write_report(report)
        return report

    def _describe(self, exc: BaseException) -> str:
        if not self.stages:
            where = "before the baseline was measured"
        elif len(self.stages) > len(self.recipe.steps):
            where = "after the last step"
        else:
            where = f"in step {len(self.stages)} ({self.recipe.steps[len(self.stages) - 1].name})"
        return f"{where}: {type(exc).__name__}: {exc}"


def _build_model(ref: ModelRef) -> nn.Module:
    if ref.path is not None:
        return load_model(ref.path)
    return create_model(ref.name, **ref.kwargs)


def _profile(model: nn.Module, data: DataSplits, recipe: Recipe) -> dict[str, Any]:
    # The DataSplits itself, so that accuracy runs at the profile's own accuracy_batch.
    report = profile(model, data.example_input(1), config=recipe.profile, data=data)
    return jsonable(report.to_dict())


def _compare(
    baseline: nn.Module | Runner, model: nn.Module | Runner, data: DataSplits, recipe: Recipe
) -> tuple[dict[str, Any], dict[str, Any]]:
    # Timed interleaved with the baseline, so that the report's speed-ups are real ratios.
    result = compare(baseline, model, data.example_input(1), config=recipe.profile, data=data)
    return jsonable(result.candidate.to_dict()), jsonable(result.ratios())


def _as_output(result: Any, name: str) -> StepOutput:
    if isinstance(result, nn.Module):
        result = StepOutput(result)
    if not isinstance(result, StepOutput) or not isinstance(result.model, nn.Module):
        raise TypeError(
            f"the handler of step {name!r} returned {type(result).__name__}; it must return a "
            "StepOutput(model, info) or an nn.Module."
        )
    if not isinstance(result.info, dict):
        raise TypeError(f"the handler of step {name!r} returned info that is not a dict.")
    return result


def _stage_line(stage: Stage, total: int) -> str:
    p = stage.profile
    acc, p50 = lookup(p, "accuracy"), lookup(p, "latency", "p50_ms")
    measured = "accuracy " + ("—" if acc is None else f"{acc * 100:.2f}%")
    measured += ", p50 " + ("—" if p50 is None else f"{p50:.3g} ms")
    if stage.index == 0:
        return f"baseline: {measured}"
    return f"[{stage.index}/{total}] {stage.name}: done in {stage.seconds:.1f}s, {measured}"
