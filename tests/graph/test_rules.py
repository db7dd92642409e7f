"""Rules beyond plain CNNs: einsum, in-place writes, recurrent layers, window attention, shuffles.

Every model is real (no mocks); each test prunes half of every group and checks that the pruned
model equals the same model with those channels zeroed.
"""

from __future__ import annotations

import random

import pytest
import torch
from torch import Tensor, nn

from slimkit.graph import DependencyGraph, build_dependency_graph


def prune_half(model: nn.Module, x: Tensor | tuple[Tensor, ...], seed: int = 0):
    """Graph, pruned and zeroed copies with half of every group's units removed at random."""
    model.eval()
    graph = build_dependency_graph(model, x)
    rng = random.Random(seed)
    removals = {
        g.index: sorted(rng.sample(range(g.size), g.size // 2)) for g in graph.groups if g.size > 1
    }
    return graph, graph.prune(model, removals).eval(), graph.zero(model, removals).eval()


def assert_exact(
    model: nn.Module, x: Tensor | tuple[Tensor, ...]
) -> tuple[DependencyGraph, nn.Module]:
    args = x if isinstance(x, tuple) else (x,)
    graph, pruned, zeroed = prune_half(model, x)
    with torch.no_grad():
        out = pruned(*args)
        assert out.shape == model(*args).shape
        torch.testing.assert_close(out, zeroed(*args), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    return graph, pruned


def slices_of(group, fqn: str, dim: int) -> list[tuple[int, ...]]:
    return [s.indices for u in group.units for s in u.slices if s.fqn == fqn and s.dim == dim]


# ---------------------------------------------------------------------------------- einsum


class EinsumNet(nn.Module):
    """A feed-forward block written with einsum on bare parameters, then einsum attention."""

    def __init__(self) -> None:
        super().__init__()
        self.w_in = nn.Parameter(torch.randn(12, 6) / 3)
        self.w_out = nn.Parameter(torch.randn(6, 12) / 3)
        self.q, self.k, self.v = nn.Linear(6, 8), nn.Linear(6, 8), nn.Linear(6, 8)
        self.num_heads = 2
        self.out = nn.Linear(8, 6)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(torch.einsum("bnc,dc->bnd", x, self.w_in))
        x = x + torch.einsum("bnd,ed->bne", h, self.w_out)
        b, n, _ = x.shape
        q, k, v = (lin(x).view(b, n, self.num_heads, -1) for lin in (self.q, self.k, self.v))
        att = torch.einsum("bnhd,bmhd->bhnm", q, k).softmax(-1)
        o = torch.einsum("bhnm,bmhd->bnhd", att, v).reshape(b, n, -1)
        return self.out(o)


def test_einsum_contracts_like_matmul_and_finds_heads() -> None:
    model = EinsumNet()
    graph, pruned = assert_exact(model, torch.randn(2, 5, 6))
    hidden = next(g for g in graph.groups if ("w_in", 0) in g.params())
    assert hidden.size == 12 and ("w_out", 1) in hidden.params()
    heads = next(g for g in graph.groups if g.kind == "heads")
    assert heads.size == 2
    assert slices_of(heads, "q.weight", 0) == [(0, 1, 2, 3), (4, 5, 6, 7)]
    assert ("out.weight", 1) in heads.params()
    assert pruned.num_heads == 1 and pruned.w_in.shape == (6, 6)


def test_parameters_used_directly_lose_whole_channel_slices() -> None:
    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 1)
            self.gamma = nn.Parameter(torch.randn(8, 1, 1))  # a layer scale
            self.pos = nn.Parameter(torch.randn(1, 8, 4, 4))  # a position embedding
            self.alpha = nn.Parameter(torch.tensor(0.5))  # one number: never sliced
            self.conv2 = nn.Conv2d(8, 2, 1)

        def forward(self, x: Tensor) -> Tensor:
            y = self.conv1(x) * self.gamma + self.pos
            return self.conv2(torch.relu(y) * self.alpha)

    graph, pruned = assert_exact(Scaled(), torch.randn(1, 3, 4, 4))
    group = next(g for g in graph.groups if "conv1" in g.modules)
    assert group.size == 8 and {("gamma", 0), ("pos", 1)} <= group.params()
    assert pruned.pos.shape == (1, 4, 4, 4) and pruned.gamma.shape == (4, 1, 1)


# ---------------------------------------------------------------------------------- in-place


class Writes(nn.Module):
    """index_put along the batch dim, fill_ on a slice of a mask: no channel moves."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv(x).mean((2, 3))
        out = torch.zeros_like(y)
        out[torch.tensor([0, 1])] = y[torch.tensor([1, 0])] * 2.0  # index_put_ on rows
        mask = y.new_zeros(y.shape[0], 1)
        mask[1:, :] = 1.0  # fill_ on a view
        return self.head(out + mask)


def test_index_put_and_fill_keep_channels_prunable() -> None:
    graph, pruned = assert_exact(Writes(), torch.randn(2, 3, 4, 4))
    assert any(g.size == 8 and g.modules == ("conv", "head") for g in graph.groups)
    assert pruned.conv.out_channels == 4 and pruned.head.in_features == 4


def test_writing_channels_into_a_view_of_a_constant_keeps_them() -> None:
    class IntoView(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)

        def forward(self, x: Tensor) -> Tensor:
            buf = x.new_zeros(x.shape[0], 8, 2, 2)  # a constant size: it cannot shrink
            buf[:, :, :1] = self.conv(x)[:, :, :1, :2]
            return buf.sum()

    graph = build_dependency_graph(IntoView(), torch.randn(1, 3, 2, 2))
    assert not any("conv" in g.modules for g in graph.groups)


def test_writing_channels_by_position_keeps_them() -> None:
    class ByPosition(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)
            self.head = nn.Linear(8, 2)

        def forward(self, x: Tensor) -> Tensor:
            y = self.conv(x).mean((2, 3))
            y[:, torch.tensor([0])] = 0.0  # channel 0 by position
            return self.head(y)

    graph = build_dependency_graph(ByPosition(), torch.randn(1, 3, 2, 2))
    assert not any("conv" in g.modules for g in graph.groups)


# ---------------------------------------------------------------------------------- recurrent


class Recurrent(nn.Module):
    def __init__(self, cell: type[nn.RNNBase]) -> None:
        super().__init__()
        self.emb = nn.Embedding(30, 10)
        self.rnn = cell(10, 12, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(24, 3)

    def forward(self, tokens: Tensor) -> Tensor:
        out, _ = self.rnn(self.emb(tokens))
        return self.fc(out[:, -1])


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN])
def test_recurrent_hidden_units_go_with_every_gate_layer_and_direction(
    cell: type[nn.RNNBase],
) -> None:
    model = Recurrent(cell)
    graph, pruned = assert_exact(model, torch.randint(0, 30, (2, 7)))
    units = next(g for g in graph.groups if ("rnn.weight_hh_l0", 1) in g.params())
    gates = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[cell]
    assert units.size == 12
    # Unit j: row j of every gate, column j of the hidden weights, in every layer and direction.
    first = {(s.fqn, s.dim): s.indices for s in units.units[0].slices}
    assert first[("rnn.weight_ih_l1_reverse", 0)] == tuple(12 * g for g in range(gates))
    assert first[("rnn.weight_ih_l1", 1)] == (0, 12)  # both directions of layer 0 feed layer 1
    assert first[("fc.weight", 1)] == (0, 12)
    assert pruned.rnn.hidden_size == 6 and pruned.rnn.input_size == 5
    assert pruned.emb.embedding_dim == 5 and pruned.emb.num_embeddings == 30


def test_recurrent_initial_state_from_the_caller_keeps_units() -> None:
    class WithState(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(4, 6, batch_first=True)
            self.fc = nn.Linear(6, 2)

        def forward(self, x: Tensor, h0: Tensor) -> Tensor:
            return self.fc(self.rnn(x, h0)[0])

    graph = build_dependency_graph(WithState(), (torch.randn(1, 3, 4), torch.zeros(1, 1, 6)))
    assert not any(("rnn.weight_hh_l0", 1) in g.params() for g in graph.groups)


# ---------------------------------------------------------------------------------- windows


class WindowAttention(nn.Module):
    """Swin-style shifted-window attention with a relative position bias table."""

    def __init__(self, dim: int = 16, heads: int = 4, window: int = 4, shift: int = 2) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.window, self.shift = window, shift
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * window - 1) ** 2, heads))
        coords = torch.stack(
            torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")
        )
        rel = (coords.flatten(1)[:, :, None] - coords.flatten(1)[:, None, :]).permute(1, 2, 0)
        index = (rel[..., 0] + window - 1) * (2 * window - 1) + rel[..., 1] + window - 1
        self.register_buffer("relative_position_index", index.flatten())

    def forward(self, x: Tensor) -> Tensor:
        b, h, w, c = x.shape
        ws, n = self.window, self.window**2
        x = torch.roll(x, (-self.shift, -self.shift), dims=(1, 2))
        win = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(-1, n, c)
        qkv = self.qkv(win).reshape(win.shape[0], n, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)
        att = (q * self.head_dim**-0.5) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index]
        att = att + bias.view(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        # Shifted windows: tokens from different regions must not attend to each other.
        mask = x.new_zeros(h, w)
        count = 0
        for rows in (slice(0, -ws), slice(-ws, -self.shift), slice(-self.shift, None)):
            for cols in (slice(0, -ws), slice(-ws, -self.shift), slice(-self.shift, None)):
                mask[rows, cols] = count
                count += 1
        mask = mask.view(h // ws, ws, w // ws, ws).permute(0, 2, 1, 3).reshape(-1, n)
        mask = mask.unsqueeze(1) - mask.unsqueeze(2)
        mask = mask.masked_fill(mask != 0, -100.0)
        att = att.view(b, -1, self.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
        att = att.view(-1, self.num_heads, n, n).softmax(-1)
        out = self.proj((att @ v).transpose(1, 2).reshape(win.shape[0], n, -1))
        out = out.view(b, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)
        return torch.roll(out, (self.shift, self.shift), dims=(1, 2))


def test_window_attention_with_bias_table_and_shift_mask_loses_whole_heads() -> None:
    model = WindowAttention()
    graph, pruned = assert_exact(model, torch.randn(1, 8, 8, 16))
    heads = next(g for g in graph.groups if g.kind == "heads")
    assert heads.size == 4
    # A head: its rows of q, k and v in the packed qkv weight, its bias-table column, its
    # columns of the output projection.
    assert slices_of(heads, "qkv.weight", 0)[1] == (4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39)
    assert slices_of(heads, "relative_position_bias_table", 1)[1] == (1,)
    assert slices_of(heads, "proj.weight", 1)[1] == (4, 5, 6, 7)
    assert pruned.num_heads == 2 and pruned.relative_position_bias_table.shape[1] == 2


def test_hard_coded_head_reshape_keeps_heads_and_says_why() -> None:
    class HardCoded(WindowAttention):
        def forward(self, x: Tensor) -> Tensor:
            b, n, c = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
            q, k, v = qkv.permute(2, 0, 3, 1, 4)
            att = (q @ k.transpose(-2, -1)).softmax(-1)
            return self.proj((att @ v).transpose(1, 2).reshape(b, n, c))

    graph = build_dependency_graph(HardCoded(), torch.randn(1, 5, 16))
    assert not any(g.kind == "heads" for g in graph.groups)
    assert any("HardCoded" in note for note in graph.notes)


def test_without_the_check_reshaped_channels_are_kept() -> None:
    graph = build_dependency_graph(WindowAttention(), torch.randn(1, 8, 8, 16), check=False)
    assert not any(g.kind == "heads" for g in graph.groups)
    assert not any(("qkv.weight", 0) in g.params() for g in graph.groups)


# ---------------------------------------------------------------------------------- shuffle


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int = 2) -> None:
        super().__init__()
        self.groups = groups
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(8, 8, 3, padding=1, groups=groups)
        self.bn = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn(self.b(torch.relu(self.a(x))))
        n, ch, h, w = y.shape
        y = y.view(n, self.groups, ch // self.groups, h, w).transpose(1, 2).reshape(n, ch, h, w)
        return self.c(torch.relu(y))


def test_channel_shuffle_removes_the_same_position_in_every_group() -> None:
    model = ChannelShuffle()
    graph, pruned = assert_exact(model, torch.randn(1, 3, 5, 5))
    shuffled = next(g for g in graph.groups if ("b.weight", 0) in g.params())
    assert shuffled.size == 4
    assert slices_of(shuffled, "b.weight", 0) == [(0, 4), (1, 5), (2, 6), (3, 7)]
    # After the shuffle, channel j of group g sits at position 2j + g of the next conv's input.
    assert slices_of(shuffled, "c.weight", 1) == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert pruned.b.groups == 2 and pruned.b.out_channels == 4
