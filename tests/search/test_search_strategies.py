"""Strategies behind ask/tell, the RL controller's update, objectives and the Pareto front."""

from __future__ import annotations

import statistics

import pytest

from slimkit.errors import ConfigError
from slimkit.search import (
    Candidate,
    FmnistSpace,
    Objective,
    OptunaStrategy,
    RandomSearch,
    RegularizedEvolution,
    ReinforceController,
    SearchConfig,
    as_space,
    dominates,
    mnasnet_reward,
    pareto_front,
    search,
)

OPS = as_space(lambda t: t.suggest_categorical("op", ["a", "b", "c", "d"]))


def _told(space, params):
    sample = space.replay(params)
    return Candidate(0, sample.params, sample.arch, sample.decisions)


def test_reinforce_update_moves_the_policy_toward_the_rewarded_choice() -> None:
    rl = ReinforceController(OPS, lr=0.1, baseline=0.5, normalize=False, entropy_weight=0.0)
    before = {op: rl.probability({"op": op}) for op in "abcd"}
    assert before["c"] == pytest.approx(0.25)  # a uniform policy to start with
    rl.tell(_told(OPS, {"op": "c"}), 1.0)  # above the baseline: more likely
    after = rl.probability({"op": "c"})
    assert after > before["c"]
    rl.tell(_told(OPS, {"op": "a"}), 0.0)  # below the baseline: less likely
    assert rl.probability({"op": "a"}) < before["a"]
    assert rl.baseline == pytest.approx(0.9 * (0.9 * 0.5 + 0.1) + 0.0)


def test_reinforce_learns_a_conditional_choice() -> None:
    # The reward needs the right op AND, only asked after op "c", the right kernel.
    def space(t):
        op = t.suggest_categorical("op", ["a", "b", "c", "d"])
        return (op, t.suggest_categorical("k", [3, 5, 7]) if op == "c" else None)

    rl = ReinforceController(as_space(space), seed=0)
    rewards = []
    for _ in range(150):
        c = rl.ask()
        reward = 1.0 if c.arch == ("c", 5) else (0.3 if c.arch[0] == "c" else 0.0)
        rl.tell(c, reward)
        rewards.append(reward)
    assert statistics.mean(rewards[-30:]) > statistics.mean(rewards[:30]) + 0.3
    assert rl.probability({"op": "c", "k": 5}) > 0.5


def _toy(arch) -> float:
    """Counts inverted residuals with kernel 5 and expansion 6, plus a wide stem (max 10)."""
    blocks = [b for s in arch["stages"] for b in s["blocks"]]
    good = sum(b["type"] == "mbconv" and b["kernel"] == 5 and b["expand"] == 6 for b in blocks)
    return good + (arch["stem"] == 24)


def _run(strategy, trials: int) -> list[float]:
    values = []
    for _ in range(trials):
        c = strategy.ask()
        values.append(_toy(c.arch))
        strategy.tell(c, values[-1])
    return values


def test_evolution_improves_on_a_toy_objective_and_beats_random() -> None:
    space = FmnistSpace()
    evo = _run(RegularizedEvolution(space, seed=0, population=20, sample_size=5), 300)
    rnd = _run(RandomSearch(space, seed=0), 300)
    assert statistics.mean(evo[-75:]) > statistics.mean(evo[:75]) + 1.0
    assert max(evo) > max(rnd)
    assert max(evo) >= 6


@pytest.mark.slow
def test_reinforce_improves_on_the_toy_objective_over_seeds() -> None:
    space = FmnistSpace()
    best_rl, best_random = [], []
    for seed in range(3):
        values = _run(ReinforceController(space, seed=seed), 160)
        assert statistics.mean(values[-40:]) > statistics.mean(values[:40]) + 1
        best_rl.append(max(values))
        best_random.append(max(_run(RandomSearch(space, seed=seed), 160)))
    assert statistics.mean(best_rl) > statistics.mean(best_random)


def test_optuna_samplers_through_ask_and_tell() -> None:
    space = FmnistSpace()
    nsga = OptunaStrategy(space, directions=["maximize", "minimize"], sampler="nsga2",
                          population=8, seed=0)  # fmt: skip
    for _ in range(24):
        c = nsga.ask()
        stem = c.arch["stem"]
        nsga.tell(c, [_toy(c.arch), stem], constraints=[stem - 16.0])
    trials = nsga.study.get_trials()
    assert len(trials) == 24 and all("constraints" in t.user_attrs for t in trials)
    tpe = OptunaStrategy(space, sampler="tpe", seed=0)
    assert len(_run(tpe, 12)) == 12 and tpe.study.best_value >= 0
    with pytest.raises(ConfigError, match="unknown Optuna sampler"):
        OptunaStrategy(space, sampler="cmaes")


def test_single_value_strategies_refuse_several_objectives() -> None:
    with pytest.raises(ConfigError, match="optimizes one value"):
        ReinforceController(OPS, directions=["maximize", "minimize"])
    with pytest.raises(ValueError, match="use nsga2, tpe or random"):
        SearchConfig(strategy="evolution", objectives=("accuracy", "latency_ms"))


def test_pareto_front_on_known_points() -> None:
    pts = [(0.90, 3.0), (0.80, 1.0), (0.85, 3.5), (0.90, 2.0), (0.70, 1.0), (0.90, 2.0), (0.95, 9)]
    assert pareto_front(pts, ["maximize", "minimize"]) == [1, 3, 5, 6]
    assert pareto_front(pts, ["minimize", "maximize"]) == [2, 4, 6]
    three = [(1, 1, 1), (2, 2, 2), (1, 2, 3), (0, 5, 0)]
    assert pareto_front(three, ["minimize"] * 3) == [0, 3]
    assert dominates((1, 1), (1, 2), ["minimize", "minimize"])
    assert not dominates((1, 1), (1, 1), ["minimize", "minimize"])


def test_mnasnet_reward_and_constraints() -> None:
    assert mnasnet_reward(0.9, 1.0, 1.0) == pytest.approx(0.9)
    assert mnasnet_reward(0.9, 2.0, 1.0) == pytest.approx(0.9 * 2**-0.07)
    assert mnasnet_reward(0.9, 0.5, 1.0, alpha=0.0, beta=-1.0) == 0.9  # hard: no bonus below T
    assert mnasnet_reward(0.9, 2.0, 1.0, alpha=0.0, beta=-1.0) == pytest.approx(0.45)
    obj = Objective(("accuracy",), max_latency_ms=2.0, max_params=1000)
    ok = {"accuracy": 0.9, "latency_ms": 1.0, "params": 500}
    slow = {"accuracy": 0.9, "latency_ms": 4.0, "params": 500}
    assert obj.constraints(slow) == [2.0, -500.0] and not obj.feasible(slow)
    assert obj.scalar(ok) == 0.9 and obj.scalar(slow) == pytest.approx(0.45)
    reward = Objective(("reward",), target_ms=1.0)
    assert reward.values(slow) == [pytest.approx(0.9 * 4**-0.07)]
    with pytest.raises(ConfigError, match="target_ms"):
        Objective(("reward",))


def test_search_loop_with_a_cheap_proxy_objective() -> None:
    # Multi-objective random search on static metrics: a real model per candidate, no training.
    cfg = SearchConfig(strategy="random", trials=12, objectives=("params", "macs"),
                       evaluator="none", max_params=200_000)  # fmt: skip
    result = search(cfg)
    assert len(result.trials) == 12
    front = result.pareto_front()
    assert front and all(t.feasible for t in front)
    for t in front:
        assert not any(
            dominates([o.metrics["params"], o.metrics["macs"]],
                      [t.metrics["params"], t.metrics["macs"]], ["minimize"] * 2)
            for o in result.trials if o.feasible
        )  # fmt: skip
    assert result.best.metrics["params"] <= 200_000
