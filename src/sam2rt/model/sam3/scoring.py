"""SAM 3's query scores: how well each decoder query matches the prompt, as a scaled dot product between the query
and the prompt's mean-pooled tokens.

The image model turns them into detection probabilities as sigmoid(score) * sigmoid(presence logit).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..layers import MLP


class ResidualMLP(MLP):
    """An MLP whose output is added to its input, then layer-normed."""

    def __init__(self, dim: int, hidden_dim: int, num_layers: int) -> None:
        super().__init__(dim, hidden_dim, dim, num_layers)
        self.out_norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        """(..., C) -> (..., C)"""
        return self.out_norm(x + super().forward(x))


class DotProductScoring(nn.Module):
    """Logit of each query matching the prompt. Defaults are the official SAM 3 sizes."""

    def __init__(self, d_model: int = 256, d_proj: int = 256, mlp_hidden_dim: int = 2048, max_logit: float = 12.0):
        super().__init__()
        self.prompt_mlp = ResidualMLP(d_model, mlp_hidden_dim, num_layers=2)
        self.prompt_proj = nn.Linear(d_model, d_proj)
        self.hs_proj = nn.Linear(d_model, d_proj)
        self.scale = d_proj**-0.5
        self.max_logit = max_logit

    def forward(self, queries: Tensor, prompt: Tensor, prompt_padding: Tensor) -> Tensor:
        """queries (B, Q, C) the decoder's output; prompt (B, P, C) the prompt tokens with prompt_padding (B, P) True
        at padding. Returns logits (B, Q), clamped to +-max_logit."""
        prompt = self.prompt_mlp(prompt)
        valid = (~prompt_padding).to(prompt.dtype)[..., None]  # (B, P, 1)
        # mean over the valid tokens; a prompt of padding only pools to zeros
        pooled = (prompt * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)  # (B, C)
        pooled = self.prompt_proj(pooled)  # (B, D)
        scores = self.hs_proj(queries) @ pooled[:, :, None]  # (B, Q, D) @ (B, D, 1) -> (B, Q, 1)
        scores = scores.squeeze(-1) * self.scale
        return scores.clamp(min=-self.max_logit, max=self.max_logit)
