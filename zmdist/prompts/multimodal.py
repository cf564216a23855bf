"""Multimodal prompts (UPT-style): text and visual prompt tokens generated together by a small shared transformer.

``n_text + n_visual`` learnable tokens of width ``dim`` (128 in the paper, 4 + 4 tokens) go through one
shared transformer layer, so the two sides are coupled; the first ``n_text`` outputs are projected to the
text tower's width and used as CoOp context vectors, the last ``n_visual`` to the image tower's width and
used as VPT-shallow tokens. Only the tokens, the shared layer and the two projections train; both
encoders stay frozen. Logits are ``logit_scale * visual(images; v) @ text(classnames; t).T``, so images go
through the image tower every step (no cached embeddings).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from zmdist.prompts.textual import TextualPrompt
from zmdist.prompts.visual import VisualPrompt


class MultimodalPrompt(nn.Module):
    """Coupled text + visual prompts for a frozen open_clip ``model`` (see the module docstring)."""

    def __init__(self, model: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], classnames: Sequence[str],
                 n_text: int = 4, n_visual: int = 4, *, dim: int = 128, heads: int = 4, seed: int = 0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"multimodal prompts: dim {dim} must be divisible by heads {heads}")
        self.text = TextualPrompt(model, tokenizer, classnames, n_text, seed=seed)
        self.visual = VisualPrompt(model, n_visual, seed=seed)
        # their own vectors are not used: the shared layer generates both
        self.text.ctx.requires_grad_(False)
        self.visual.tokens.requires_grad_(False)
        self.n_text = n_text
        text_width = self.text.ctx.shape[1]
        visual_width = self.visual.tokens.shape[1]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.tokens = nn.Parameter(torch.randn(n_text + n_visual, dim) * 0.02)
            self.shared = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=0.0,
                                                     batch_first=True, norm_first=True)
            self.to_text = nn.Linear(dim, text_width)
            self.to_visual = nn.Linear(dim, visual_width)
        self.to(self.text.ctx.device)

    def prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(text context (n_text, text width), visual tokens (n_visual, visual width)) from the shared layer."""
        mixed = self.shared(self.tokens.unsqueeze(0))[0]
        return self.to_text(mixed[:self.n_text]), self.to_visual(mixed[self.n_text:])

    def class_features(self) -> torch.Tensor:
        """(C, D) unit class features from the generated text context."""
        return self.text(self.prompts()[0])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C) cosine similarities of prompted image features and prompted class features."""
        ctx, visual_tokens = self.prompts()
        return self.visual(images, visual_tokens) @ self.text(ctx).T
