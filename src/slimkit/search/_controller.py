"""The RL controller of Zoph & Le (2017): a recurrent network that emits the choices.

At each decision the controller's LSTM cell reads the embedding of the previous choice and a
softmax head (one per decision name, created when the space first asks it, which makes the
controller work with define-by-run spaces) gives the distribution of this choice. It is trained
with REINFORCE: ``loss = -(R - b) * log p(architecture) - entropy_weight * H``, ``b`` an
exponential moving average of the rewards (the baseline), one update every ``batch`` told
samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from slimkit.errors import ConfigError
from slimkit.search._space import Decision, SearchSpace
from slimkit.search._strategies import Candidate, Strategy

__all__ = ["ControllerNet", "ReinforceController"]


class ControllerNet(nn.Module):
    """An LSTM (or GRU) cell with a softmax head and a choice embedding per decision name."""

    def __init__(self, hidden: int = 64, cell: str = "lstm") -> None:
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ConfigError(f"controller cell must be 'lstm' or 'gru', got {cell!r}.")
        self.hidden, self.cell_type = hidden, cell
        self.cell: nn.Module = (
            nn.LSTMCell(hidden, hidden) if cell == "lstm" else nn.GRUCell(hidden, hidden)
        )
        self.start = nn.Parameter(torch.zeros(1, hidden))
        self.heads = nn.ModuleDict()
        self.embeddings = nn.ModuleDict()

    def ensure(self, name: str, n: int, generator: torch.Generator) -> list[nn.Parameter]:
        """Create the head and embedding of decision ``name`` (``n`` options); new parameters."""
        key = _key(name, n)
        if key in self.heads:
            return []
        with torch.random.fork_rng(devices=[]):  # the caller's global generator stays as it was
            head, embed = nn.Linear(self.hidden, n), nn.Embedding(n, self.hidden)
        nn.init.zeros_(head.weight)  # a uniform policy to start with
        nn.init.zeros_(head.bias)
        nn.init.normal_(embed.weight, std=0.1, generator=generator)
        self.heads[key], self.embeddings[key] = head, embed
        return [*head.parameters(), *embed.parameters()]

    def initial(self) -> tuple[Tensor, Any]:
        zeros = torch.zeros(1, self.hidden)
        state = (zeros, zeros.clone()) if self.cell_type == "lstm" else zeros
        return self.start, state

    def step(self, inp: Tensor, state: Any, name: str, n: int) -> tuple[Tensor, Any]:
        """Logits of decision ``name`` and the new recurrent state."""
        state = self.cell(inp, state)
        h = state[0] if self.cell_type == "lstm" else state
        return self.heads[_key(name, n)](h)[0], state

    def embed(self, name: str, n: int, index: int) -> Tensor:
        return self.embeddings[_key(name, n)](torch.tensor([index]))


def _key(name: str, n: int) -> str:
    # ModuleDict keys may not contain dots.
    return f"{name.replace('.', '__')}__n{n}"


class ReinforceController(Strategy):
    """Zoph & Le's controller trained by REINFORCE with a moving-average baseline.

    Args:
        space: The search space.
        directions: One objective (the reward); ``minimize`` negates it.
        seed: Seed of the controller's weights and samples.
        hidden: LSTM/GRU width.
        cell: ``"lstm"`` (as in the paper) or ``"gru"``.
        lr: Adam learning rate.
        baseline_decay: Decay of the reward's exponential moving average (the baseline).
        baseline: The baseline's initial value; ``None`` starts it at the first reward.
        entropy_weight: Weight of the entropy bonus (0 for plain REINFORCE).
        normalize: Divide the advantage by a moving estimate of its standard deviation, so that
            the step size does not depend on the reward's scale.
        batch: Told samples per update (Zoph & Le averaged over several child networks).
        temperature: Softmax temperature of the sampling.
        tanh_constant: Bound the logits to ``c * tanh(logits)`` (ENAS uses 2.5), so that no
            option's probability collapses to zero; ``None`` leaves them free.

    Example:
        >>> from slimkit.search._space import as_space
        >>> space = as_space(lambda t: t.suggest_categorical("op", ["a", "b", "c"]))
        >>> rl = ReinforceController(space, lr=0.2, baseline=0.5, normalize=False)
        >>> before = rl.probability({"op": "b"})
        >>> c = rl.ask()
        >>> rl.tell(c, 1.0 if c.arch == "b" else 0.0)
        >>> rl.probability({"op": "b"}) != before
        True
    """

    name = "reinforce"

    def __init__(
        self, space: SearchSpace, *, directions: Sequence[str] = ("maximize",), seed: int = 0,
        hidden: int = 64, cell: str = "lstm", lr: float = 0.01, baseline_decay: float = 0.9,
        baseline: float | None = None, entropy_weight: float = 0.01, normalize: bool = True,
        batch: int = 1, temperature: float = 1.0, tanh_constant: float | None = None,
    ) -> None:  # fmt: skip
        super().__init__(space, directions=directions, seed=seed)
        if not 0 <= baseline_decay < 1 or lr <= 0 or batch < 1 or temperature <= 0:
            raise ConfigError(
                "controller: need 0 <= baseline_decay < 1, lr > 0, batch >= 1, temperature > 0."
            )
        gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = ControllerNet(hidden, cell)
        self.generator = gen
        # The heads of the decisions seen in a few draws exist from the start (one parameter
        # group, a cheap optimizer step); a decision met later gets its own group then.
        for name, choices in space.decisions(samples=32, seed=seed).items():
            self.net.ensure(name, len(choices), gen)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=lr)
        self.baseline_decay, self.baseline = baseline_decay, baseline
        self.entropy_weight, self.normalize = entropy_weight, normalize
        self.batch, self.temperature, self.tanh_constant = batch, temperature, tanh_constant
        self._var: float | None = None
        self._pending: list[Tensor] = []
        self._version = 0
        self._graphs: dict[int, tuple[int, Tensor, Tensor]] = {}
        self.history: list[dict[str, float]] = []

    def _propose(self, number: int) -> Candidate:
        net = self.net
        inp, state = net.initial()
        log_prob, entropy = torch.zeros(()), torch.zeros(())

        def choose(name: str, choices: tuple[Any, ...]) -> int:
            nonlocal inp, state, log_prob, entropy
            n = len(choices)
            self._ensure(name, n)
            logits, state = net.step(inp, state, name, n)
            logp = torch.log_softmax(self._shape(logits), dim=-1)
            index = int(torch.multinomial(logp.detach().exp(), 1, generator=self.generator))
            log_prob = log_prob + logp[index]
            entropy = entropy - (logp.exp() * logp).sum()
            inp = net.embed(name, n, index)
            return index

        candidate = self._candidate(number, self.space.run(choose))
        # Kept for the update while the policy is unchanged (asked, then told, in turn).
        self._graphs = {number: (self._version, log_prob, entropy)}
        return candidate

    def _shape(self, logits: Tensor) -> Tensor:
        logits = logits / self.temperature
        if self.tanh_constant is not None:  # ENAS: bounded logits keep every option possible
            logits = self.tanh_constant * torch.tanh(logits)
        return logits

    def _ensure(self, name: str, n: int) -> None:
        new = self.net.ensure(name, n, self.generator)
        if new:
            self.optimizer.add_param_group({"params": new})

    def score(self, decisions: Sequence[Decision]) -> tuple[Tensor, Tensor]:
        """Log-probability and entropy of a decision sequence under the current policy."""
        net = self.net
        inp, state = net.initial()
        log_prob, entropy = torch.zeros(()), torch.zeros(())
        for d in decisions:
            n = len(d.choices)
            self._ensure(d.name, n)
            logits, state = net.step(inp, state, d.name, n)
            logp = torch.log_softmax(self._shape(logits), dim=-1)
            log_prob = log_prob + logp[d.index]
            entropy = entropy - (logp.exp() * logp).sum()
            inp = net.embed(d.name, n, d.index)
        return log_prob, entropy

    def probability(self, params: Mapping[str, Any]) -> float:
        """The probability that the controller emits the architecture of ``params``."""
        sample = self.space.replay(params)
        with torch.no_grad():
            log_prob, _ = self.score(sample.decisions)
        return math.exp(float(log_prob))

    def _learn(self, candidate: Candidate, values: list[float], constraints: list[float]) -> None:
        reward = values[0] if self.directions[0] == "maximize" else -values[0]
        if self.baseline is None:
            self.baseline = reward
        advantage = reward - self.baseline
        if self.normalize:
            sq = advantage * advantage
            self._var = sq if self._var is None else 0.9 * self._var + 0.1 * sq
            advantage = advantage / (math.sqrt(self._var) + 1e-8) if self._var > 0 else 0.0
        self.baseline = self.baseline_decay * self.baseline + (1 - self.baseline_decay) * reward
        version, log_prob, entropy = self._graphs.pop(candidate.number, (-1, None, None))
        if version != self._version or log_prob is None or entropy is None:
            log_prob, entropy = self.score(candidate.decisions)  # the policy moved since
        self._pending.append(-advantage * log_prob - self.entropy_weight * entropy)
        self.history.append({"reward": reward, "baseline": self.baseline, "advantage": advantage})
        if len(self._pending) >= self.batch:
            loss = torch.stack(self._pending).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self._pending = []
            self._version += 1
