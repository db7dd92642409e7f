"""The output folder of a run: its layout and its atomic writes.

Layout::

    out_dir/
      recipe.yaml        the validated recipe, defaults filled in
      env.json           slimkit.env.collect_env()
      report.json        rewritten after every stage
      report.md          rewritten after every stage
      accuracy_vs_latency.png, accuracy_vs_size.png
      steps/NN-<name>/   the model after step NN (model.safetensors, model.json), step artifacts
      model/             the final model, written when the last step is done

Every file is replaced atomically, so a run stopped at any point leaves valid files behind.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from slimkit._io import write_json, write_text
from slimkit.recipe._report import PLOTS, render_markdown, write_plots
from slimkit.recipe._schema import Recipe
from slimkit.serialize import save_model

RECIPE_FILE = "recipe.yaml"
ENV_FILE = "env.json"
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
MODEL_DIR = "model"
STEPS_DIR = "steps"
OUTPUTS = (RECIPE_FILE, ENV_FILE, REPORT_JSON, REPORT_MD, MODEL_DIR, STEPS_DIR, *PLOTS)
"""Every name a run writes at the top of its folder."""


class RunFolder:
    """Paths and writers of one run's output folder.

    Args:
        root: The folder; created if missing.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @property
    def model_dir(self) -> Path:
        return self.root / MODEL_DIR

    def step_dir(self, index: int, name: str) -> Path:
        """``steps/NN-<name>/``, created."""
        folder = self.root / STEPS_DIR / f"{index:02d}-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def prepare(self, overwrite: bool) -> None:
        """Create the folder; refuse one that holds another run unless ``overwrite``.

        Overwriting deletes only what a run writes, so stale steps of a longer earlier run
        cannot be mistaken for this run's.
        """
        existing = [name for name in OUTPUTS if (self.root / name).exists()]
        if existing and not overwrite:
            raise FileExistsError(
                f"{self.root} already holds a run ({', '.join(existing)}); choose another output "
                "folder or pass overwrite=True (--overwrite) to replace it."
            )
        for name in existing:
            path = self.root / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        self.root.mkdir(parents=True, exist_ok=True)

    def write_recipe(self, recipe: Recipe) -> Path:
        header = "# The validated recipe of this run, with every default filled in.\n"
        return write_text(self.root / RECIPE_FILE, header + recipe.to_yaml())

    def write_env(self, env: Mapping[str, Any]) -> Path:
        return write_json(self.root / ENV_FILE, env)

    def write_report(self, report: Mapping[str, Any]) -> None:
        """Write report.json, report.md and the plots, each atomically, the JSON last.

        The JSON is the record a resumed or inspecting tool reads; writing it last means that
        when it names a stage, the Markdown and plots already show that stage.
        """
        write_text(self.root / REPORT_MD, render_markdown(report))
        write_plots(report, self.root)
        write_json(self.root / REPORT_JSON, report)

    def save_model(self, model: nn.Module, folder: Path) -> Path:
        """Save ``model`` into ``folder`` (model.safetensors, then model.json)."""
        return save_model(model, folder)
