"""The dependency graph on hand-built models whose couplings are known."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from slimkit.graph import DependencyGraph, UnsupportedOperationError, build_dependency_graph


def prune_and_zero(model: nn.Module, x: Tensor, fraction: float = 0.5, seed: int = 0):
    model.eval()
    graph = build_dependency_graph(model, x)
    rng = random.Random(seed)
    removals = {
        g.index: rng.sample(range(g.size), int(g.size * fraction))
        for g in graph.groups
        if int(g.size * fraction) > 0
    }
    return graph, graph.prune(model, removals).eval(), graph.zero(model, removals).eval()


def assert_pruning_is_exact(model: nn.Module, x: Tensor) -> DependencyGraph:
    graph, pruned, zeroed = prune_and_zero(model, x)
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape
        torch.testing.assert_close(pruned(x), zeroed(x), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    return graph


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a = nn.Conv2d(8, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=1)
        self.head = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.stem(x))
        x = x + self.b(torch.relu(self.a(x)))
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 4), 1))


def test_residual_add_couples_both_branches_and_flatten_maps_to_linear() -> None:
    graph = assert_pruning_is_exact(Residual(), torch.randn(2, 3, 8, 8))
    sizes = sorted((g.size, g.modules) for g in graph.groups)
    # The stem, the second conv and the head's input columns form one group across the add.
    assert (8, ("a",)) not in sizes
    coupled = next(g for g in graph.groups if "stem" in g.modules)
    assert set(coupled.modules) == {"stem", "a", "b", "head"}
    # Each channel owns 16 columns of the head (4x4 positions after flatten).
    head_slice = next(s for s in coupled.units[0].slices if s.fqn == "head.weight")
    assert len(head_slice.indices) == 16


class Concat(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 1)
        self.b = nn.Conv2d(3, 6, 1)
        self.bn = nn.BatchNorm2d(10)
        self.out = nn.Conv2d(10, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(torch.relu(self.bn(torch.cat([self.a(x), self.b(x)], dim=1))))


def test_concat_gives_each_branch_its_own_slice_of_the_next_layer() -> None:
    graph = assert_pruning_is_exact(Concat(), torch.randn(2, 3, 5, 5))
    assert sorted(g.size for g in graph.groups) == [4, 6]


class SplitChunk(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.left = nn.Conv2d(4, 4, 1)
        self.right = nn.Conv2d(4, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        a, b = torch.chunk(self.conv(x), 2, dim=1)
        return torch.cat([self.left(a), self.right(b)], dim=1).mean(dim=(2, 3))


def test_chunk_and_split_keep_positions_so_channels_are_kept() -> None:
    model = SplitChunk().eval()
    graph = build_dependency_graph(model, torch.randn(1, 3, 4, 4))
    # chunk slices by position: removing a channel would move the cut, so conv's outputs stay.
    assert not any("conv" in g.modules for g in graph.groups)


class Grouped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 16, 1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=4)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.bn = nn.BatchNorm2d(16)
        self.project = nn.Conv2d(16, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.grouped(torch.relu(self.expand(x)))
        return self.project(torch.relu(self.bn(self.depthwise(x))))


def test_grouped_and_depthwise_convs_stay_valid() -> None:
    model = Grouped()
    graph, pruned, _ = prune_and_zero(model, torch.randn(1, 3, 6, 6))
    assert_pruning_is_exact(Grouped(), torch.randn(1, 3, 6, 6))
    assert pruned.grouped.groups == 4 and pruned.grouped.in_channels % 4 == 0
    # Depthwise: one group per remaining channel.
    assert pruned.depthwise.groups == pruned.depthwise.in_channels == pruned.depthwise.out_channels
    # The grouped conv's input couples the same position of all 4 groups into one unit.
    expand = next(g for g in graph.groups if "expand" in g.modules)
    assert expand.size == 4


class Attention(nn.Module):
    """Separate q, k, v projections and a view into heads, as in BERT-style models."""

    def __init__(self, dim: int = 16, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.ffn = nn.Sequential(nn.Linear(dim, 32), nn.GELU(), nn.Linear(32, dim))

    def split(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.heads, 4).transpose(1, 2)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1) @ v
        x = x + self.out(att.transpose(1, 2).reshape(*x.shape[:2], -1))
        return x + self.ffn(x)


def test_attention_heads_go_whole_across_q_k_v_and_ffn_neurons_are_free() -> None:
    model = Attention().eval()
    graph = build_dependency_graph(model, torch.randn(1, 5, 16))
    kinds = sorted((g.kind, g.size) for g in graph.groups)
    assert ("heads", 4) in kinds  # four heads, each removing 4 rows of q, k and v
    assert ("channels", 32) in kinds  # FFN hidden neurons
    heads = next(g for g in graph.groups if g.kind == "heads")
    q_rows = next(s for s in heads.units[0].slices if s.fqn == "q.weight" and s.dim == 0)
    assert q_rows.indices == (0, 1, 2, 3)


def test_unknown_operation_is_an_error_naming_it_and_ignore_is_the_way_out() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)
            self.odd = nn.Conv2d(4, 4, 1)

        def forward(self, x: Tensor) -> Tensor:
            return torch.fft.fft2(self.odd(self.conv(x))).real

    with pytest.raises(UnsupportedOperationError, match="fft"):
        build_dependency_graph(Odd(), torch.randn(1, 3, 4, 4))


def test_zero_weight_channels_prune_losslessly() -> None:
    """Channels whose weights are all zero can go without changing the output (< 1e-5)."""
    model = Residual().eval()
    x = torch.randn(4, 3, 8, 8)
    graph = build_dependency_graph(model, x)
    group = next(g for g in graph.groups if g.modules == ("a", "b"))
    with torch.no_grad():
        for pos in (1, 5):
            for s in group.units[pos].slices:
                if s.dim == 0:
                    getattr(model, s.fqn.split(".")[0]).weight[list(s.indices)] = 0
                    getattr(model, s.fqn.split(".")[0]).bias[list(s.indices)] = 0
        pruned = graph.prune(model, {group.index: [1, 5]})
        assert pruned.a.out_channels == 6 and pruned.b.in_channels == 6
        assert (pruned(x) - model(x)).abs().max() < 1e-5


@st.composite
def small_cnns(draw: st.DrawFn) -> nn.Module:
    layers: list[nn.Module] = []
    channels = 3
    for _ in range(draw(st.integers(1, 4))):
        width = draw(st.integers(2, 12))
        kind = draw(st.sampled_from(["conv", "conv_bn", "depthwise"]))
        if kind == "depthwise":
            layers += [nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.ReLU()]
            continue
        layers.append(nn.Conv2d(channels, width, draw(st.sampled_from([1, 3])), padding="same"))
        if kind == "conv_bn":
            layers.append(nn.BatchNorm2d(width))
        layers.append(nn.ReLU())
        channels = width
    layers += [nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(channels * 4, 3)]
    return nn.Sequential(*layers)


@settings(max_examples=15, deadline=None)
@given(small_cnns(), st.integers(0, 1000))
def test_random_small_architectures_always_prune_to_a_model_that_runs(
    model: nn.Module, seed: int
) -> None:
    x = torch.randn(2, 3, 6, 6)
    _, pruned, zeroed = prune_and_zero(model, x, seed=seed)
    with torch.no_grad():
        out = pruned(x)
        assert out.shape == (2, 3)
        torch.testing.assert_close(out, zeroed(x), atol=1e-5, rtol=1e-5)
