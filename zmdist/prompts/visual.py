"""VPT-shallow visual prompts: N learnable tokens between the class token and the patch tokens of a frozen ViT.

The image goes through open_clip's ``VisionTransformer`` as ``forward`` runs it (patch embedding, class
token, positional embedding, ``ln_pre``, transformer, class-token pooling, ``ln_post``, projection), with
the prompt tokens inserted after the positional embedding (they carry no position, as in VPT) and before
``ln_pre``, so they are normalised like every other token. Only the tokens train; initialised
``width^-0.5 * randn`` as in the paper. Towers that pool over the patch tokens (``avg``) or through an
attention pooler are refused: the prompt tokens would change what is pooled, not only what is attended.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zmdist.prompts.textual import freeze


class VisualPrompt(nn.Module):
    """``n_tokens`` VPT-shallow tokens for the frozen image tower of an open_clip ``model``."""

    def __init__(self, model: nn.Module, n_tokens: int = 16, *, seed: int = 0):
        super().__init__()
        visual = getattr(model, "visual", None)
        needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")
        if visual is None or any(not hasattr(visual, a) for a in needed):
            raise ValueError(f"visual prompts need an open_clip VisionTransformer image tower; "
                             f"{type(visual).__name__} is not one (timm and ResNet towers are not supported)")
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
            raise ValueError("visual prompts: only class-token pooling (pool_type 'tok', no attention pooler) is supported")
        if n_tokens < 1:
            raise ValueError(f"visual prompts: n_tokens must be >= 1, got {n_tokens}")
        freeze(model)
        object.__setattr__(self, "clip", model)  # not a submodule: its weights are not ours to train or save
        width = visual.conv1.out_channels
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(n_tokens, width, generator=generator) * width ** -0.5
        self.tokens = nn.Parameter(start.to(visual.conv1.weight.device))

    def forward(self, images: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """(B, D) L2-normalised image features of preprocessed ``images`` (B, 3, H, W) with the prompt inserted;
        ``tokens`` (n, width) replaces the module's own (multimodal prompts generate them)."""
        v = self.clip.visual
        x = v.conv1(images)
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, patches, width)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + v.positional_embedding.to(x.dtype)
        tokens = self.tokens if tokens is None else tokens
        prompt = tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :1], prompt, x[:, 1:]], dim=1)
        x = v.ln_pre(x)
        x = v.transformer(x)
        pooled = v.ln_post(x[:, 0]) if getattr(v, "final_ln_after_pool", False) else v.ln_post(x)[:, 0]
        if v.proj is not None:
            pooled = pooled @ v.proj
        return F.normalize(pooled.float(), dim=-1)
