"""CoOp textual prompts: N learnable context vectors in front of each class name, through a frozen text tower.

The prompt of class ``c`` is ``[SOT] v_1 ... v_N <tokens of name_c> . [EOT]``: the class-name tokens are
fixed, the N context vectors are shared by all classes and are the only parameters that train. The
sequence goes through open_clip's own text tower (token embedding, positional embedding, causal
transformer, final LayerNorm, EOT pooling, projection) exactly as ``encode_text`` does, with the context
vectors spliced in place of N placeholder tokens right after SOT. So class features are
``normalize(text_features(ctx, names))`` and logits ``logit_scale * image_embedding @ features.T``:
textual prompts can train on cached image embeddings, no image through the image tower.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

PLACEHOLDER = "X"  # one BPE token per word, replaced by a context vector


class _TextTower:
    """The pieces of an open_clip text tower, wherever the model keeps them: on ``CLIP`` itself, or in
    ``CustomTextCLIP.text`` (a ``TextTransformer``). Models whose tower this splice cannot reproduce
    exactly (a CoCa-style appended class token, a bidirectional mask, a Hugging Face text model) are
    refused by name rather than encoded differently from ``encode_text``."""

    def __init__(self, model: nn.Module):
        text = getattr(model, "text", None)
        owner = text if text is not None and hasattr(text, "token_embedding") else model
        missing = [a for a in ("token_embedding", "positional_embedding", "transformer", "ln_final") if not hasattr(owner, a)]
        if missing:
            raise ValueError(f"textual prompts need an open_clip transformer text tower; {type(model).__name__} "
                             f"lacks {', '.join(missing)} (Hugging Face text towers are not supported)")
        if getattr(owner, "cls_emb", None) is not None:
            raise ValueError("textual prompts: text towers with an appended class token (CoCa) are not supported")
        self.owner = owner
        self.pool_type = getattr(owner, "text_pool_type", getattr(owner, "pool_type", "argmax"))
        self.eos_id = getattr(owner, "text_eos_id", getattr(owner, "eos_id", None))
        if self.pool_type not in ("argmax", "eos", "last", "first"):
            raise ValueError(f"textual prompts: text pool type {self.pool_type!r} is not supported")
        self.attn_mask = getattr(owner, "attn_mask", None)
        if self.attn_mask is None:
            raise ValueError("textual prompts: a text tower without a causal mask (bidirectional) is not supported")

    def encode_embedded(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``encode_text`` from token embeddings ``x`` (C, L, width) on: the positions come from ``tokens``."""
        o = self.owner
        cast = o.transformer.get_cast_dtype()
        x = x.to(cast) + o.positional_embedding.to(cast)
        x = o.transformer(x, attn_mask=self.attn_mask)
        x = o.ln_final(x)
        rows = torch.arange(x.shape[0], device=x.device)
        if self.pool_type == "argmax":  # the EOT token has the highest id (CLIP's BPE)
            x = x[rows, tokens.argmax(dim=-1)]
        elif self.pool_type == "eos":
            x = x[rows, (tokens == self.eos_id).int().argmax(dim=-1)]
        else:
            x = x[:, 0] if self.pool_type == "first" else x[:, -1]
        proj = o.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, nn.Linear) else x @ proj


def freeze(model: nn.Module) -> None:
    """No gradient for any encoder weight: prompt tuning changes only the prompt parameters."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


class TextualPrompt(nn.Module):
    """CoOp context vectors for ``classnames`` around a frozen open_clip ``model`` (kept outside the module's
    parameters, so ``parameters()``, ``state_dict()`` and the optimizer hold the context vectors alone)."""

    def __init__(self, model: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], classnames: Sequence[str],
                 n_ctx: int = 16, *, init_std: float = 0.02, ctx_init: str = "", seed: int = 0):
        super().__init__()
        if not classnames:
            raise ValueError("textual prompts need at least one class name")
        freeze(model)
        object.__setattr__(self, "clip", model)  # not a submodule: its weights are not ours to train or save
        self.tower = _TextTower(model)
        self.classnames = list(classnames)
        width = self.tower.owner.token_embedding.weight.shape[1]
        device = self.tower.owner.token_embedding.weight.device
        if ctx_init:
            n_ctx = len(_word_tokens(tokenizer, ctx_init))
        if n_ctx < 1:
            raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
        self.n_ctx = n_ctx
        placeholder = ctx_init or " ".join([PLACEHOLDER] * n_ctx)
        tokens = tokenizer([f"{placeholder} {name}." for name in self.classnames]).to(device)
        context_length = tokens.shape[1]
        for name in self.classnames:  # SOT + context + name + "." + EOT must fit, or the name is cut
            need = 1 + n_ctx + len(_word_tokens(tokenizer, f"{name}.")) + 1
            if need > context_length:
                raise ValueError(f"class {name!r} with n_ctx={n_ctx} needs {need} tokens but the text tower's "
                                 f"context length is {context_length}: lower n_ctx or shorten the class name")
        self.register_buffer("tokens", tokens, persistent=False)
        with torch.no_grad():
            embedded = self.tower.owner.token_embedding(tokens).float()
        self.register_buffer("prefix", embedded[:, :1].clone(), persistent=False)  # SOT
        self.register_buffer("suffix", embedded[:, 1 + n_ctx:].clone(), persistent=False)  # name . EOT pad
        if ctx_init:  # CoOp's word initialisation: start from the phrase's own token embeddings
            start = embedded[0, 1:1 + n_ctx].clone()
        else:
            generator = torch.Generator().manual_seed(seed)
            start = torch.randn(n_ctx, width, generator=generator).mul_(init_std).to(device)
        self.ctx = nn.Parameter(start)

    def forward(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """(C, D) L2-normalised class features of the current prompt (differentiable in the context only).
        ``ctx`` (n_ctx, width) replaces the module's own vectors (multimodal prompts generate them)."""
        c = self.prefix.shape[0]
        ctx = self.ctx if ctx is None else ctx
        x = torch.cat([self.prefix, ctx.to(self.prefix.dtype).unsqueeze(0).expand(c, -1, -1), self.suffix], dim=1)
        return F.normalize(self.tower.encode_embedded(x, self.tokens).float(), dim=-1)

    @torch.no_grad()
    def classifier(self) -> torch.Tensor:
        """The learned prompt's (C, D) head, as ``zmdist pseudolabel classifier=`` reads it."""
        return self.forward().detach()

    def logit_scale(self) -> float:
        return float(self.clip.logit_scale.exp().item())


def _word_tokens(tokenizer: Callable[[list[str]], torch.Tensor], text: str) -> list[int]:
    """BPE ids of ``text`` without SOT/EOT/padding (needs the untruncated count, so the text is tokenised alone)."""
    ids = tokenizer([text])[0].tolist()
    eot = max(ids)  # CLIP's EOT has the highest id in the sequence
    return ids[1:ids.index(eot)]
