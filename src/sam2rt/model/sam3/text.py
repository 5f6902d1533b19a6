"""SAM 3's text encoder: a CLIP-style causal transformer over token ids, its per-token features resized to the
detector's width.

Token ids come from `sam2rt.processing.text.TextTokenizer` (start token, the phrase, end token, then id 0). The
state-dict keys are those of Meta's `VETextEncoder` (less its tokenizer, which holds no weights).
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .attention import PackedAttention

PAD_ID = 0  # the id that pads a phrase to the context length; Meta masks every token of this id


class TextFeatures(NamedTuple):
    """The text side of SAM 3 for N phrases of L tokens, batch-first (Meta returns memory and embeddings
    sequence-first: (L, N, C); transpose(0, 1) gives Meta's layout)."""

    memory: Tensor  # (N, L, d_model) per-token features, resized to the detector's width ("language_features")
    padding_mask: Tensor  # (N, L) bool, True at id 0, i.e. padding, as Meta ("language_mask")
    input_embeds: Tensor  # (N, L, width) token embeddings before the transformer ("language_embeds")


class TextBlock(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a GELU MLP, each added back."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        hidden = int(width * mlp_ratio)
        self.attn = PackedAttention(width, num_heads)
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict([("c_fc", nn.Linear(width, hidden)), ("gelu", nn.GELU()), ("c_proj", nn.Linear(hidden, width))])
        )

    def forward(self, x: Tensor, causal_bias: Tensor) -> Tensor:
        """x (N, L, width), causal_bias (1, 1, L, L) additive (-inf above the diagonal) -> (N, L, width)."""
        normed = self.ln_1(x)
        x = x + self.attn(normed, normed, normed, bias=causal_bias)
        return x + self.mlp(self.ln_2(x))


class TextBlockStack(nn.Module):
    """The transformer's blocks, in a module of their own so that their keys read `transformer.resblocks.i`."""

    def __init__(self, width: int, depth: int, num_heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(TextBlock(width, num_heads) for _ in range(depth))

    def forward(self, x: Tensor, causal_bias: Tensor) -> Tensor:
        """x (N, L, width) -> (N, L, width)."""
        for block in self.resblocks:
            x = block(x, causal_bias)
        return x


class CausalTextTransformer(nn.Module):
    """CLIP's text transformer: token and learned position embeddings, causal blocks, a final LayerNorm.

    `text_projection` (CLIP's pooled projection) is in the checkpoint but SAM 3 uses per-token features only, so it
    is kept for loading and never applied.
    """

    def __init__(
        self, context_length: int, vocab_size: int, width: int, depth: int, num_heads: int, projection_dim: int
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.token_embedding = nn.Embedding(vocab_size, width)
        self.positional_embedding = nn.Parameter(torch.empty(context_length, width))
        self.transformer = TextBlockStack(width, depth, num_heads)
        self.ln_final = nn.LayerNorm(width)
        self.text_projection = nn.Parameter(torch.empty(width, projection_dim))
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=width**-0.5)

    def forward(self, token_ids: Tensor) -> tuple[Tensor, Tensor]:
        """token_ids (N, L), L <= context_length -> (per-token features (N, L, width), embeddings (N, L, width))."""
        length = token_ids.shape[1]
        if length > self.context_length:
            raise ValueError(f"{length} tokens exceed the text encoder's context length {self.context_length}")
        embeds = self.token_embedding(token_ids)  # (N, L, width)
        x = embeds + self.positional_embedding[:length]
        # token i attends to tokens 0..i: padding, which follows the end token, never reaches a phrase's tokens
        future = torch.ones(length, length, dtype=torch.bool, device=token_ids.device).triu(1)
        causal_bias = torch.zeros(length, length, dtype=x.dtype, device=x.device).masked_fill(future, float("-inf"))
        x = self.transformer(x, causal_bias[None, None])  # bias (1, 1, L, L): every phrase and head
        return self.ln_final(x), embeds


class TextEncoder(nn.Module):
    """Token ids -> SAM 3's text features (`TextFeatures`). Defaults are the official SAM 3 sizes."""

    def __init__(
        self,
        d_model: int = 256,
        width: int = 1024,
        num_heads: int = 16,
        depth: int = 24,
        context_length: int = 32,
        vocab_size: int = 49408,
        projection_dim: int = 512,
    ) -> None:
        super().__init__()
        self.context_length = context_length
        self.encoder = CausalTextTransformer(context_length, vocab_size, width, depth, num_heads, projection_dim)
        self.resizer = nn.Linear(width, d_model)

    def forward(self, token_ids: Tensor) -> TextFeatures:
        """token_ids (N, L) int64, L <= context_length (32 for SAM 3) -> TextFeatures, batch-first:
        memory (N, L, d_model), padding_mask (N, L) bool True at id 0, input_embeds (N, L, width)."""
        features, embeds = self.encoder(token_ids)
        return TextFeatures(memory=self.resizer(features), padding_mask=token_ids == PAD_ID, input_embeds=embeds)
