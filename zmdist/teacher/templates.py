"""Prompt template sets for zero-shot classifiers.

A template is a string with one ``{}`` where the class name goes. Sets are chosen by name in configs
(``templates=imagenet8``) or given inline as a list; every result records a hash of the exact
templates used (see ``zmdist.provenance``), because a silent template change changes published numbers.
"""

from __future__ import annotations

# CLIP's CIFAR-10/100 ensemble (data/prompts.md of openai/CLIP, Radford et al. 2021): 18 templates.
_CLIP_CIFAR = [
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
]

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
    # The per-dataset ensembles of CLIP's data/prompts.md (openai/CLIP), named after the zmdist source
    # schemes; the classes they expect are the readable names in zmdist.data.benchmark_classes.
    "cifar10": list(_CLIP_CIFAR),  # CLIP's CIFAR10 templates
    "cifar100": list(_CLIP_CIFAR),  # CLIP's CIFAR100 templates (the same 18 as CIFAR10)
    "flowers102": ["a photo of a {}, a type of flower."],  # CLIP's Flowers102 template
    # CLIP's DescribableTextures templates (8 in prompts.md)
    "dtd": [
        "a photo of a {} texture.",
        "a photo of a {} pattern.",
        "a photo of a {} thing.",
        "a photo of a {} object.",
        "a photo of the {} texture.",
        "a photo of the {} pattern.",
        "a photo of the {} thing.",
        "a photo of the {} object.",
    ],
    # CLIP's EuroSAT templates
    "eurosat": [
        "a centered satellite photo of {}.",
        "a centered satellite photo of a {}.",
        "a centered satellite photo of the {}.",
    ],
    # CLIP's RESISC45 templates (18)
    "resisc45": [
        "satellite imagery of {}.",
        "aerial imagery of {}.",
        "satellite photo of {}.",
        "aerial photo of {}.",
        "satellite view of {}.",
        "aerial view of {}.",
        "satellite imagery of a {}.",
        "aerial imagery of a {}.",
        "satellite photo of a {}.",
        "aerial photo of a {}.",
        "satellite view of a {}.",
        "aerial view of a {}.",
        "satellite imagery of the {}.",
        "aerial imagery of the {}.",
        "satellite photo of the {}.",
        "aerial photo of the {}.",
        "satellite view of the {}.",
        "aerial view of the {}.",
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
