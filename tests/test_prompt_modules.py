"""Prompt modules around a frozen open_clip model (zmdist/prompts): the splice reproduces open_clip's own
towers, and training changes the prompt parameters only."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zmdist.prompts import TextualPrompt, VisualPrompt, load_prompt, save_prompt
from zmdist.prompts.training import OptimSettings, train_round
from zmdist.teacher import load_teacher

NAMES = ["zero", "seven", "golden retriever"]
OPTIM = OptimSettings(lr=0.1, momentum=0.9, weight_decay=0.1, batch_size=8, epochs=3, warmup_epochs=1)


@pytest.fixture(scope="module")
def teacher():
    return load_teacher("zmdist-tiny-vit", "random", seed=0)


def _weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_textual_prompt_with_a_phrase_as_context_equals_encode_text(teacher):
    """With the context initialised from "a photo of the", the spliced sequence IS the tokenised prompt, so
    the features must equal open_clip's encode_text of "a photo of the NAME." exactly. Kills: context
    inserted at the wrong position, positions not added, pooling at a fixed index instead of EOT."""
    prompt = TextualPrompt(teacher.model, teacher.tokenizer, NAMES, ctx_init="a photo of the")
    assert prompt.n_ctx == 4
    ref = F.normalize(teacher.model.encode_text(teacher.tokenizer([f"a photo of the {n}." for n in NAMES])).float(), dim=-1)
    torch.testing.assert_close(prompt(), ref, rtol=0, atol=1e-6)


def test_textual_prompt_refuses_a_context_that_does_not_fit(teacher):
    with pytest.raises(ValueError, match="golden retriever.*context length is 16"):
        TextualPrompt(teacher.model, teacher.tokenizer, NAMES, n_ctx=12)


def test_textual_training_changes_only_the_context_vectors(teacher):
    """A few SGD steps on random unit embeddings: ctx moves, every encoder weight is bit-identical, no encoder
    weight needs a gradient, and the prompt's parameters (what the optimiser gets) are ctx alone. Kills:
    encoders left trainable (weight decay alone would move them), the model registered as a submodule."""
    before = _weights(teacher.model)
    prompt = TextualPrompt(teacher.model, teacher.tokenizer, NAMES, n_ctx=4, seed=1)
    start = prompt.ctx.detach().clone()
    assert [n for n, _ in prompt.named_parameters()] == ["ctx"]
    assert not any(p.requires_grad for p in teacher.model.parameters())
    emb = F.normalize(torch.randn(24, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    targets = torch.arange(24) % 3
    stats = train_round(prompt, lambda rows: 10.0 * emb[rows] @ prompt().T, targets, torch.zeros(24, dtype=torch.bool),
                        (0.0, 1.0), OPTIM, seed=0)
    assert stats["steps"] == 9
    assert not torch.equal(prompt.ctx.detach(), start)
    after = _weights(teacher.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def _vpt_reference(model, tokens: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """open_clip's own VisionTransformer.forward with the tokens spliced in by a hook before ln_pre."""

    def insert(_module, args):
        (x,) = args
        return (torch.cat([x[:, :1], tokens.expand(x.shape[0], -1, -1), x[:, 1:]], dim=1),)

    handle = model.visual.ln_pre.register_forward_pre_hook(insert)
    try:
        return F.normalize(model.visual(images).float(), dim=-1)
    finally:
        handle.remove()


def test_visual_prompt_matches_open_clip_forward_and_trains_only_its_tokens(teacher):
    """The VPT forward equals open_clip's forward with the tokens inserted after the class token (a hook);
    training moves the tokens and leaves every image-tower weight as it was. Kills: tokens after the
    patches or before the positional embedding, pooling a prompt token, a trainable tower."""
    prompt = VisualPrompt(teacher.model, n_tokens=3, seed=0)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(prompt(images), _vpt_reference(teacher.model, prompt.tokens, images),
                                   rtol=0, atol=1e-6)
        plain = F.normalize(teacher.model.encode_image(images).float(), dim=-1)
        assert (prompt(images) - plain).abs().max() > 1e-3  # the tokens change what the class token sees
    before = _weights(teacher.model)
    start = prompt.tokens.detach().clone()
    head = F.normalize(torch.randn(3, 64), dim=-1)
    train_round(prompt, lambda rows: 10.0 * prompt(images[rows]) @ head.T, torch.tensor([0, 1, 2, 0, 1, 2]),
                torch.ones(6, dtype=torch.bool), (1.0, 0.0), OPTIM, seed=0)
    assert [n for n, _ in prompt.named_parameters()] == ["tokens"]
    assert not torch.equal(prompt.tokens.detach(), start)
    after = _weights(teacher.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_prompt_files_round_trip_and_foreign_files_are_refused(tmp_path):
    ctx = torch.randn(4, 8)
    save_prompt(tmp_path / "p.safetensors", {"ctx": ctx}, {"kind": "textual", "n_ctx": 4})
    tensors, meta = load_prompt(tmp_path / "p.safetensors")
    assert torch.equal(tensors["ctx"], ctx) and meta == {"kind": "textual", "n_ctx": 4}
    from safetensors.torch import save_file

    save_file({"x": ctx}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a zmdist prompt file"):
        load_prompt(tmp_path / "other.safetensors")


def test_multimodal_prompt_couples_both_sides_and_trains_only_its_generator(teacher):
    """The shared layer generates the text context and the visual tokens; training moves the generator,
    not the encoders nor the (unused) own vectors of the two sides; the loss reaches both projections.
    Kills: a side left uncoupled (its projection gets no gradient), encoders trainable."""
    from zmdist.prompts import MultimodalPrompt

    prompt = MultimodalPrompt(teacher.model, teacher.tokenizer, NAMES, 2, 2, dim=32, heads=4, seed=0)
    before = _weights(teacher.model)
    start = {k: v.detach().clone() for k, v in prompt.named_parameters()}
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    train_round(prompt, lambda rows: 10.0 * prompt(images[rows]), torch.tensor([0, 1, 2, 0, 1, 2]),
                torch.ones(6, dtype=torch.bool), (1.0, 0.0), OPTIM, seed=0)
    moved = {k for k, v in prompt.named_parameters() if not torch.equal(v.detach(), start[k])}
    assert {"tokens", "to_text.weight", "to_visual.weight", "shared.linear1.weight"} <= moved
    assert not moved & {"text.ctx", "visual.tokens"}
    after = _weights(teacher.model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_training_keeps_the_epoch_that_scores_best_on_held_out_pseudolabels(teacher):
    """validate() after every epoch: the prompt of the best epoch is restored at the end (the earliest of
    equal scores). Kills: the best epoch recorded but the last one kept, a later tie winning."""
    emb = F.normalize(torch.randn(24, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    for scores, best in (([0.2, 0.9, 0.5], 1), ([0.5, 0.5, 0.5], 0)):
        prompt = TextualPrompt(teacher.model, teacher.tokenizer, NAMES, n_ctx=4, seed=1)
        seen: list[torch.Tensor] = []

        def validate() -> float:
            seen.append(prompt.ctx.detach().clone())
            return scores[len(seen) - 1]

        stats = train_round(prompt, lambda rows: 10.0 * emb[rows] @ prompt().T, torch.arange(24) % 3,
                            torch.zeros(24, dtype=torch.bool), (0.0, 1.0), OPTIM, seed=0, validate=validate)
        assert stats["best_epoch"] == best and stats["validation_accuracy"] == scores[best]
        assert torch.equal(prompt.ctx.detach(), seen[best]) and not torch.equal(seen[best], seen[-1])
