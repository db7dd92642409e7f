"""Architecture search: spaces as code, strategies that learn from measurements, many workers.

- **Spaces** are define-by-run functions of a trial (``suggest_categorical``/``suggest_int``, as
  in Optuna); :class:`FmnistSpace` covers depth, widths, kernels, expansion ratios, skip
  connections and block types (plain, residual, depthwise-separable, inverted residual) of
  Fashion-MNIST models. Its architectures are plain JSON, built by the registered model
  ``fmnist_searched(arch=...)``, so the result is saved, trained, pruned and quantized like any
  model.
- **Strategies** share one ask/tell interface: :class:`RandomSearch`,
  :class:`ReinforceController` (Zoph & Le's RNN controller, REINFORCE with a moving-average
  baseline), :class:`RegularizedEvolution` (aging evolution), and Optuna's TPE and NSGA-II
  (:class:`OptunaStrategy`).
- **Objectives**: accuracy after a short training or from a one-shot :class:`Supernet`,
  latency at batch 1 (measured, or summed from a per-machine :class:`LatencyTable`),
  parameters, MACs; constraints; MnasNet's reward; the Pareto front and its plot.
- **Scale-out**: trials in Optuna storage (a journal file, or a database with heartbeats);
  :func:`create_study` once, then :func:`run_worker` in as many processes as wanted.

Example:
    >>> from slimkit.search import FmnistSpace, SearchConfig, search
    >>> space = FmnistSpace()
    >>> space.size() > 10**10
    True
    >>> cfg = SearchConfig(strategy="random", trials=3, objectives=("params",), evaluator="none")
    >>> result = search(cfg)
    >>> len(result.trials), result.best.metrics["params"] > 0
    (3, True)
"""

from __future__ import annotations

from slimkit.search._config import ControllerConfig, SearchConfig
from slimkit.search._controller import ReinforceController
from slimkit.search._distributed import (
    WorkerReport,
    create_study,
    load_study_config,
    open_storage,
    run_worker,
    study_progress,
    study_result,
)
from slimkit.search._evaluate import CandidateEvaluator, Evaluation, search_splits
from slimkit.search._fmnist_space import (
    FmnistSpace,
    FmnistSpaceConfig,
    get_space,
    list_spaces,
    register_space,
)
from slimkit.search._latency import LatencyTable, measure_latency
from slimkit.search._objectives import Objective, dominates, mnasnet_reward, pareto_front
from slimkit.search._search import SearchResult, TrialRecord, make_strategy, search
from slimkit.search._space import ChoiceTrial, Decision, Sample, SearchSpace, Trial, as_space
from slimkit.search._strategies import (
    Candidate,
    OptunaStrategy,
    RandomSearch,
    RegularizedEvolution,
    Strategy,
)
from slimkit.search._supernet import (
    Supernet,
    SupernetConfig,
    load_supernet,
    recalibrate_bn,
    train_supernet,
)

__all__ = [
    "Candidate",
    "CandidateEvaluator",
    "ChoiceTrial",
    "ControllerConfig",
    "Decision",
    "Evaluation",
    "FmnistSpace",
    "FmnistSpaceConfig",
    "LatencyTable",
    "Objective",
    "OptunaStrategy",
    "RandomSearch",
    "RegularizedEvolution",
    "ReinforceController",
    "Sample",
    "SearchConfig",
    "SearchResult",
    "SearchSpace",
    "Strategy",
    "Supernet",
    "SupernetConfig",
    "Trial",
    "TrialRecord",
    "WorkerReport",
    "as_space",
    "create_study",
    "dominates",
    "get_space",
    "list_spaces",
    "load_study_config",
    "load_supernet",
    "make_strategy",
    "measure_latency",
    "mnasnet_reward",
    "open_storage",
    "pareto_front",
    "recalibrate_bn",
    "register_space",
    "run_worker",
    "search",
    "search_splits",
    "study_progress",
    "study_result",
    "train_supernet",
]
