"""Load any open_clip model by any name open_clip accepts, with the weights that name implies.

Names are a registered model name with ``pretrained`` an open_clip tag, a local checkpoint file or
``random`` (random weights, asked for by name: an empty ``pretrained`` is refused, see
``check_teacher_weights``), ``hf-hub:org/repo`` (config and weights from the Hugging Face hub or its
cache), or ``local-dir:PATH`` (a folder with ``open_clip_config.json`` and the weights). The same code
path serves real weights on a user's cluster and the tiny configs shipped in ``zmdist/teacher/model_configs``
that tests and the embedded default use offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from zmdist.config import ConfigError

RANDOM_WEIGHTS = "random"  # teacher.pretrained asking for random weights on purpose (tests, benchmarks)
MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
_registered: set[str] = set()


def register_model_configs(path: str | Path = MODEL_CONFIG_DIR) -> None:
    """Make the JSON model configs in ``path`` (a file or a folder) known to open_clip by file stem.

    open_clip keeps a global registry; registering twice is harmless but we skip it to keep start-up quiet.
    """
    import open_clip

    key = str(Path(path).resolve())
    if key in _registered:
        return
    open_clip.add_model_config(path)
    _registered.add(key)


@dataclass
class Teacher:
    """An open_clip model with the image transform and tokenizer that belong to it."""

    name: str
    pretrained: str | None
    model: torch.nn.Module
    preprocess: Callable[[Any], torch.Tensor]
    tokenizer: Callable[[list[str]], torch.Tensor]

    @property
    def logit_scale(self) -> float:
        """The model's learned temperature (CLIP's 100 for released weights)."""
        return float(self.model.logit_scale.exp().item())

    @property
    def input_size(self) -> int:
        """The longer side of the image tower's input (what ``preprocess`` resizes and crops to)."""
        size = getattr(self.model.visual, "image_size", 224)
        return int(max(size) if isinstance(size, (tuple, list)) else size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device


def load_teacher(
    name: str,
    pretrained: str | None = None,
    *,
    device: str | torch.device = "cpu",
    model_config: str | None = None,
    cache_dir: str | None = None,
    seed: int = 0,
) -> Teacher:
    """Build the open_clip model ``name`` in eval mode.

    ``name`` is a registered open_clip model name, ``hf-hub:org/repo`` or ``local-dir:PATH`` (those two
    bring their own weights, so ``pretrained`` must be empty). For a registered name, ``pretrained`` is an
    open_clip tag (downloads on a machine with hub access), a path to a local checkpoint (``.pt``/``.bin``
    loaded with ``weights_only=True`` by open_clip, or ``.safetensors``), or ``"random"`` for random weights
    (None/empty is refused by ``check_teacher_weights``).
    ``model_config`` is an extra JSON file or folder of configs to register first, for models open_clip does
    not ship. ``cache_dir`` is where open_clip downloads and looks up tags and hub repos (None: the hub's
    default, ``HF_HUB_CACHE``). Random weights are drawn from ``seed`` (torch's global RNG is seeded right
    before the model is built, inside ``fork_rng`` so the caller's RNG is left as it was): every rank,
    array task and rerun of a run gets the same random teacher.
    """
    import open_clip

    register_model_configs()
    if model_config:
        if not Path(model_config).exists():
            raise FileNotFoundError(f"teacher.model_config: {model_config} does not exist")
        register_model_configs(model_config)
    name = _canonical_name(name)
    if _schema(name) is None:
        _check_registered(name, pretrained)
        check_teacher_weights(name, pretrained)
    elif pretrained:
        raise ValueError(f"teacher.pretrained={pretrained!r} is set, but teacher.model={name} brings its own "
                         "weights: leave teacher.pretrained empty")
    else:
        teacher_files(name, cache_dir)  # our errors (which file is missing, how to fill the cache) before open_clip's
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # random weights (and anything a checkpoint leaves unset) follow the seed
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=None if pretrained == RANDOM_WEIGHTS else pretrained or None, device=device,
            cache_dir=cache_dir,
        )
    model.eval()
    tokenizer = open_clip.get_tokenizer(name, cache_dir=cache_dir)
    return Teacher(name=name, pretrained=pretrained, model=model, preprocess=preprocess, tokenizer=tokenizer)


def check_teacher_weights(model: str, pretrained: str | None, prefix: str = "teacher.") -> None:
    """Refuse an empty ``pretrained`` for a registered model name. open_clip would build the model with
    random weights and say so in one warning line, and every pseudolabel would then be at chance: random
    weights must be asked for by name (``random``). ``hf-hub:``/``local-dir:`` models bring their own weights.
    Cheap (no model is built), so a stage calls it before it creates its output folder; ``prefix`` is where
    the options live (``teachers.NAME.`` in a bench sweep)."""
    import open_clip

    if pretrained or _schema(model) is not None:
        return
    name = _canonical_name(model)
    tags = open_clip.list_pretrained_tags_by_model(name)
    weights = (f"an open_clip tag (e.g. {', '.join(tags[:2])}; all of them: `python -c 'import open_clip; "
               f"print(open_clip.list_pretrained_tags_by_model(\"{name}\"))'`) or a checkpoint file" if tags
               else f"a checkpoint file (open_clip has no tags for {name})")
    raise ConfigError(
        f"{prefix}pretrained is empty, so {prefix}model={name} would have random weights and chance-level "
        f"pseudolabels: set {prefix}pretrained to {weights}, or use "
        f"{prefix}model=hf-hub:ORG/REPO or local-dir:PATH; {prefix}pretrained={RANDOM_WEIGHTS} asks for random "
        "weights on purpose (tests, benchmarks)")


def _schema(name: str) -> str | None:
    """``"hf-hub"``, ``"local-dir"`` or None (a registered model name), by open_clip's own parser."""
    from open_clip.factory import parse_model_name

    return parse_model_name(name)[0]


def _canonical_name(name: str) -> str:
    """One spelling of a registered name: open_clip's ``create_model`` reads ``ViT-B/32`` as ``ViT-B-32``, but
    its ``get_tokenizer`` and ``get_model_config`` do not (they would give a default tokenizer, no config)."""
    return name if _schema(name) else name.replace("/", "-")


def _check_registered(name: str, pretrained: str | None) -> None:
    """Refuse an unknown model name (suggesting close ones), a missing checkpoint file, or a checkpoint of
    another architecture, with messages that name the option, before open_clip fails less clearly."""
    import open_clip

    if open_clip.get_model_config(name) is None:
        import difflib

        close = difflib.get_close_matches(name, open_clip.list_models(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(
            f"teacher.model: unknown open_clip model {name!r}.{hint} "
            "Add a JSON config with teacher.model_config=PATH for custom architectures, or use "
            "hf-hub:org/repo or local-dir:PATH for a model that comes with its open_clip_config.json."
        )
    if not is_checkpoint_path(pretrained):
        return
    if not Path(pretrained).is_file():
        raise FileNotFoundError(
            f"teacher.pretrained: checkpoint {pretrained} does not exist "
            f"(give an open_clip tag, a local checkpoint file, or {RANDOM_WEIGHTS} for random weights)"
        )
    check_checkpoint_architecture(name, Path(pretrained))


def is_checkpoint_path(pretrained: str | None) -> bool:
    """Whether ``pretrained`` names a local checkpoint file rather than an open_clip tag or ``random`` (which
    wins over a file of that name in the working folder; write ``./random`` for that)."""
    return bool(pretrained) and pretrained != RANDOM_WEIGHTS and (
        "/" in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")) or Path(pretrained).is_file())


def teacher_files(name: str, cache_dir: str | None = None) -> tuple[Path, Path] | None:
    """The config JSON and weights file of an ``hf-hub:`` or ``local-dir:`` teacher, None for a registered
    name. Found by open_clip's own rules (the same lookup ``create_model`` makes), so what the fingerprint
    hashes is what open_clip loads. A hub repo is read from the cache when it is there (offline with
    ``HF_HUB_OFFLINE=1``) and downloaded otherwise."""
    from open_clip.factory import parse_model_name

    schema, identifier = parse_model_name(name)
    if schema == "local-dir":
        return _local_dir_files(Path(identifier))
    if schema == "hf-hub":
        return _hub_files(identifier, cache_dir)
    return None


def _local_dir_files(folder: Path) -> tuple[Path, Path]:
    """``folder``'s config and weights; open_clip would build a random model from a folder without weights."""
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
    from open_clip.factory import _find_checkpoint_in_dir  # open_clip's pick among several weight files

    option = f"teacher.model=local-dir:{folder}"
    if not folder.is_dir():
        raise FileNotFoundError(f"{option}: folder {folder} does not exist")
    config = folder / HF_CONFIG_NAME
    if not config.is_file():
        raise FileNotFoundError(f"{option}: {config} is missing; the folder needs {HF_CONFIG_NAME} "
                                '({"model_cfg": ..., "preprocess_cfg": ...}, as open_clip writes it) next to the weights')
    weights = _find_checkpoint_in_dir(folder)
    if weights is None:
        raise FileNotFoundError(f"{option}: {folder} has no weights file; put {HF_SAFE_WEIGHTS_NAME} or "
                                f"{HF_WEIGHTS_NAME} next to {HF_CONFIG_NAME}")
    return config, Path(weights)


def _hub_files(repo: str, cache_dir: str | None) -> tuple[Path, Path]:
    """The hub repo's config and weights (safetensors preferred, as open_clip does), from the cache or the hub.
    open_clip would go on with random weights when only the weights are missing; we refuse."""
    from open_clip.constants import HF_CONFIG_NAME
    from open_clip.pretrained import download_pretrained_from_hf

    try:
        config = download_pretrained_from_hf(repo, filename=HF_CONFIG_NAME, cache_dir=cache_dir)
        weights = download_pretrained_from_hf(repo, cache_dir=cache_dir)
    except FileNotFoundError as err:
        raise FileNotFoundError(
            f"teacher.model=hf-hub:{repo}: {err}. Without hub access, download the repo once where there is "
            f"(`hf download {repo} --cache-dir DIR`) and run with HF_HUB_OFFLINE=1 and teacher.cache_dir=DIR "
            "(or leave teacher.cache_dir empty and use the default HF_HUB_CACHE on both machines)"
        ) from err
    return Path(config), Path(weights)


def teacher_fingerprint(name: str, pretrained: str | None, seed: int = 0, *,
                        cache_dir: str | None = None) -> dict[str, str]:
    """What makes the teacher's outputs what they are, independent of where files live: the model's
    architecture and its weights. For a registered name: a hash of open_clip's config (so a custom
    ``model_config`` counts) and the sha256 of the checkpoint's bytes for a local file (a moved file
    matches, an overwritten one does not), the tag for an open_clip tag, the seed for random weights
    (``random``, or empty as runs made before ``random`` existed recorded it: the same fingerprint). For
    ``hf-hub:``/``local-dir:``: a hash of the ``open_clip_config.json`` content (model and preprocessing)
    and the sha256 of the weights file open_clip loads, so the same files match whichever hub revision or
    folder path they came from (a moved folder resumes; a README-only hub commit does not refuse). Call after
    ``load_teacher`` (which registers the configs and checks the files exist)."""
    import open_clip

    from zmdist.provenance import hash_file, hash_json, hash_strings

    name = _canonical_name(name)
    files = teacher_files(name, cache_dir)
    if files is not None:
        config, weights = files
        return {"model": name if _schema(name) == "hf-hub" else "local-dir",
                "architecture": hash_json(json.loads(config.read_text())),
                "weights": f"file sha256:{hash_file(weights)}"}
    config = open_clip.get_model_config(name)
    arch = hash_strings([json.dumps(config, sort_keys=True, default=str)]) if config is not None else "unknown"
    if is_checkpoint_path(pretrained):
        weights = f"file sha256:{hash_file(Path(pretrained))}"
    elif pretrained and pretrained != RANDOM_WEIGHTS:
        weights = f"open_clip tag {pretrained}"
    else:
        weights = f"random, seed {seed}"
    return {"model": name, "architecture": arch, "weights": weights}


def _shape_signature(shapes: dict[str, tuple[int, ...]]) -> dict[str, int] | None:
    """A ViT CLIP's architecture read from its weights' shapes (None when it is not one)."""
    need = ("visual.conv1.weight", "visual.positional_embedding", "positional_embedding", "text_projection")
    if not all(k in shapes for k in need):
        return None
    patch = shapes["visual.conv1.weight"][2]
    layers = lambda prefix: len({k.split(".")[prefix.count(".")] for k in shapes if k.startswith(prefix)})  # noqa: E731
    return {"embed dim": shapes["text_projection"][1], "vision width": shapes["visual.conv1.weight"][0],
            "vision layers": layers("visual.transformer.resblocks."), "patch": patch,
            "image size": int(round((shapes["visual.positional_embedding"][0] - 1) ** 0.5)) * patch,
            "text width": shapes["positional_embedding"][1], "text layers": layers("transformer.resblocks.")}


def _config_signature(config: dict) -> dict[str, int] | None:
    vision, text = config.get("vision_cfg", {}), config.get("text_cfg", {})
    if "patch_size" not in vision or "width" not in text:
        return None
    image = vision.get("image_size", 224)
    return {"embed dim": config.get("embed_dim"), "vision width": vision.get("width"),
            "vision layers": vision.get("layers"), "patch": vision["patch_size"],
            "image size": image if isinstance(image, int) else image[0], "text width": text["width"],
            "text layers": text.get("layers")}


def _checkpoint_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "pt") as fh:
            return {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return {k.removeprefix("module."): tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}


def check_checkpoint_architecture(name: str, path: Path) -> None:
    """Refuse a checkpoint of another architecture with a message that says which registered open_clip
    model it looks like (open_clip itself fails deep inside with e.g. "text pos_embed width changed!")."""
    import open_clip

    config = open_clip.get_model_config(name)
    wanted = _config_signature(config) if config else None
    try:
        found = _shape_signature(_checkpoint_shapes(path))
    except Exception as err:  # unreadable: let open_clip's loader report it
        raise ValueError(f"teacher.pretrained: {path} is not a readable checkpoint ({err})") from err
    if wanted is None or found is None or wanted == found:
        return
    looks_like = [m for m in open_clip.list_models()
                  if (c := open_clip.get_model_config(m)) and _config_signature(c) == found]
    like = f"it looks like {', '.join(looks_like[:5])}" if looks_like else "no registered open_clip model matches it"
    describe = lambda sig: ", ".join(f"{k} {v}" for k, v in sig.items())  # noqa: E731
    raise ValueError(f"teacher.pretrained: {path} is a checkpoint of another architecture than teacher.model={name}: "
                     f"{like} ({describe(found)}); {name} has {describe(wanted)}. Set teacher.model to the "
                     "checkpoint's model (or teacher.model_config=JSON for a custom one)")


def load_recorded_teacher(embed_info: dict[str, Any], where: object, device: torch.device | str = "cpu",
                          check: bool = True) -> tuple[Teacher, dict[str, str] | None]:
    """The teacher ``embed_info.json`` records (random weights from its recorded seed, or its checkpoint),
    and its fingerprint; refused if that differs from the one that embedded the images in ``where``, because
    its text tower would then not match those image embeddings. ``check=False`` skips the fingerprint (a
    sha256 of the weights file: one rank hashing it is enough) and returns None for it. A registered model
    recorded with an empty ``pretrained`` (by runs made before ``random`` had to be asked for) is random."""
    spec, seed = embed_info["teacher"], int(embed_info.get("seed", 0))
    pretrained = spec["pretrained"] or (None if _schema(spec["model"]) else RANDOM_WEIGHTS)
    cache_dir = spec.get("cache_dir") or None
    teacher = load_teacher(spec["model"], pretrained, device=device, seed=seed,
                           model_config=spec.get("model_config") or None, cache_dir=cache_dir)
    if not check:
        return teacher, None
    now = teacher_fingerprint(spec["model"], pretrained, seed, cache_dir=cache_dir)
    embedded_by = embed_info.get("teacher_fingerprint")
    if embedded_by is not None and embedded_by != now:
        raise ValueError(f"the teacher has changed since {where} was embedded (was {embedded_by!r}, now {now!r}): "
                         "its text tower would not match the image embeddings. Restore the checkpoint, or re-run "
                         "`zmdist embed` into a new --out folder.")
    return teacher, now
