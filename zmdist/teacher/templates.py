"""Prompt template sets for zero-shot classifiers.

A template is a string with one ``{}`` where the class name goes. Sets are chosen by name in configs
(``templates=imagenet8``) or given inline as a list; every result records a hash of the exact
templates used (see ``zmdist.provenance``), because a silent template change changes published numbers.
"""

from __future__ import annotations

TEMPLATE_SETS: dict[str, list[str]] = {
    "simple": ["a photo of a {}."],
    # ZeroMatch's published CLIP prompt.
    "zeromatch": ["This is a photo of {}."],
    # A short version of CLIP's ImageNet ensemble (the 7 templates of the CLIP notebook).
    "imagenet7": [
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    ],
    # The caption templates the embedded-default teacher was pretrained with (zmdist.demo.synth_digits).
    "digits": [
        "a photo of the digit {}.",
        "a photo of the number {}.",
        "an image of the digit {}.",
        "the digit {}.",
        "the number {}.",
        "a digit {}.",
        "a picture of a {}.",
        "a small image of the digit {}.",
        "a handwritten {}.",
        "a handwritten digit {}.",
        "the number {} written by hand.",
    ],
}


def get_templates(spec: str | list[str]) -> list[str]:
    """Resolve a template-set name or an inline list into a validated list of templates."""
    if isinstance(spec, str):
        if spec not in TEMPLATE_SETS:
            import difflib

            close = difflib.get_close_matches(spec, list(TEMPLATE_SETS), n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise ValueError(
                f"templates: unknown template set {spec!r}.{hint} Known: {', '.join(sorted(TEMPLATE_SETS))}; "
                "or give a list of strings with one '{}' each."
            )
        templates = TEMPLATE_SETS[spec]
    else:
        templates = list(spec)
    if not templates:
        raise ValueError("templates: the template list is empty")
    for t in templates:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"templates: {t!r} must be a string with exactly one '{{}}' for the class name")
    return templates


def prompt_names(classes: list[str]) -> list[str]:
    """Folder-style class names read better in prompts with spaces: ``golden_retriever`` -> ``golden retriever``."""
    return [c.replace("_", " ") for c in classes]
