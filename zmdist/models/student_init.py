"""Where a student's weights start: random, or a pretrained backbone with a new classifier.

Why: USB and ZeroMatch fine-tune ImageNet-pretrained ViTs (ViT-S/2 at 32 px for CIFAR, ViT-S/16 at 224 px,
drop path 0.2), normalising images as the backbone was trained; a student trained from random weights is
another experiment.

``StudentConfig`` is ``zmdist train``'s ``student`` section. ``prepare_student`` runs before a run writes
anything: it builds the student once, finds and reads the weights ``student.pretrained`` names (a local
``.safetensors`` or ``.pt``/``.bin`` state dict, ``hf-hub:ORG/REPO``, or ``timm``: a timm student's own
pretrained tag, whose weights are on the hub), matches them to the student's tensors and resolves the
views' normalisation, so a missing file, a pickle or another architecture's checkpoint is an error before
the output folder exists. ``StudentInit.apply`` then loads the matched tensors into each new student.

The rules are the teachers' (``zmdist.teacher.loading``): no pickles (``torch.load(weights_only=True)``),
hub files through huggingface_hub's cache (``student.cache_dir``; offline with ``HF_HUB_OFFLINE=1``).

The classifier is replaced when its class count differs: a tensor the student has with ``num_classes`` rows
where the checkpoint's has another row count (the rest of the shape equal; e.g. ``head.weight``
1000 x 384 -> 10 x 384, ``head.bias``) keeps its fresh initialisation. Any other shape difference refuses
the checkpoint.
"""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from zmdist.config import option
from zmdist.models import create_student
from zmdist.train.augment import MEAN, STD

log = logging.getLogger("zmdist")
HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what a hub repo's weights are called, preferred first
HUB_CONFIG = "config.json"  # a timm hub repo's config: {"architecture", "num_classes", "pretrained_cfg": {...}}
WRAPPERS = ("state_dict", "model")  # keys under which training checkpoints keep the model's state dict


@dataclass
class StudentConfig:
    """``zmdist train``'s ``student`` section: which model, how it is built, which weights it starts from."""

    name: str = option("cnn-small", "a registered name (cnn-small, cnn-tiny), timm:NAME or torchvision:NAME")
    pretrained: str = option(
        "", "weights to start from: a local .safetensors or .pt/.bin state dict, hf-hub:ORG/REPO (its "
            "model.safetensors or pytorch_model.bin), or timm (a timm student's own pretrained tag, from the hub); "
            "a classifier of another class count is replaced (summary.json: student_init); empty: random weights")
    cache_dir: str = option("", "hub cache of hf-hub:/timm weights (empty: HF_HUB_CACHE); without network, fill it "
                                "where there is (`hf download REPO --cache-dir DIR`) and set HF_HUB_OFFLINE=1")
    drop_path: float = option(0.0, "stochastic depth rate of a timm student (its drop_path_rate; USB and ZeroMatch "
                                   "fine-tune ViTs with 0.2); 0 = off", min=0, max=1)
    img_size: int | None = option(None, "input size the model is built for (timm's img_size: a ViT's position "
                                        "embedding, e.g. 32 for USB's ViT-S/2 on CIFAR); must equal the views' "
                                        "img_size; null: the model's default", min=1)
    mean: list[float] | None = option(None, "RGB mean of the views' Normalize; null: the pretrained backbone's "
                                            "(its pretrained config) when student.pretrained is set, else 0.5")
    std: list[float] | None = option(None, "RGB std of the views' Normalize; null: as student.mean")
    options: dict[str, Any] = option(factory=dict, help="other keyword arguments of the student's constructor "
                                                        "(timm: e.g. {patch_size: 2} for a ViT-S/2)")


def student_kwargs(cfg: StudentConfig) -> dict[str, Any]:
    """The constructor's keyword arguments: ``options``, plus ``drop_path_rate`` and ``img_size`` when set."""
    kwargs = dict(cfg.options)
    if cfg.drop_path and not cfg.name.startswith("timm:"):
        raise ValueError(f"student.drop_path={cfg.drop_path}: only timm students take a drop-path rate (timm's "
                         f"drop_path_rate); {cfg.name} does not: leave student.drop_path at 0")
    for key, own, value in (("drop_path_rate", "drop_path", cfg.drop_path or None),
                            ("img_size", "img_size", cfg.img_size)):
        if value is None:
            continue
        if key in kwargs:
            raise ValueError(f"student.{own} and student.options.{key} set the same argument: keep student.{own}")
        kwargs[key] = value
    return kwargs


def build_student(cfg: StudentConfig, num_classes: int) -> nn.Module:
    """The student ``cfg`` describes with ``num_classes`` outputs and its initial (random) weights."""
    kwargs = student_kwargs(cfg)
    try:
        return create_student(cfg.name, num_classes, **kwargs)
    except TypeError as err:  # an argument the constructor does not take (e.g. img_size for a CNN)
        raise ValueError(f"student: {cfg.name} cannot be built with {kwargs} ({err}): drop the argument it does not "
                         "take from student.options / student.img_size / student.drop_path") from err


@dataclass
class StudentInit:
    """The weights every new student of a run starts from and the views' normalisation (``prepare_student``)."""

    source: str  # student.pretrained, or "random"
    weights: dict[str, torch.Tensor] = field(repr=False)  # the checkpoint's tensors the student takes as they are
    replaced: list[str]  # classifier tensors of another class count: left at their new initialisation
    missing: list[str]  # the student's tensors the checkpoint lacks: left at their initialisation
    unexpected: list[str]  # the checkpoint's tensors the student has no place for: not used
    mean: list[float]
    std: list[float]
    normalisation: str  # where mean/std come from
    file: Path | None = None
    sha256: str | None = None

    def apply(self, model: nn.Module) -> None:
        """Copy the pretrained tensors into ``model`` (a new student built by ``build_student``)."""
        if self.weights:
            model.load_state_dict(self.weights, strict=False)

    def summary(self) -> dict[str, Any]:
        """``summary.json``'s ``student_init``: where the weights came from and which tensors they set."""
        return {"source": self.source, "file": str(self.file) if self.file else None, "sha256": self.sha256,
                "loaded": len(self.weights), "replaced": self.replaced, "missing": self.missing,
                "unexpected": self.unexpected, "mean": self.mean, "std": self.std,
                "normalisation": self.normalisation}


def prepare_student(cfg: StudentConfig, num_classes: int, views_img_size: int) -> StudentInit:
    """Check the student section and read its pretrained weights (errors name the option and what to do)."""
    if cfg.img_size is not None and cfg.img_size != views_img_size:
        raise ValueError(f"student.img_size={cfg.img_size} but img_size={views_img_size}: the views would feed "
                         f"{views_img_size} px images to a model built for {cfg.img_size} px; set both alike")
    for key in ("mean", "std"):
        values = getattr(cfg, key)
        if values is not None and (len(values) != 3 or (key == "std" and min(values) <= 0)):
            raise ValueError(f"student.{key}={values}: give 3 values (R, G, B)"
                             + ("; each > 0" if key == "std" else ""))
    if (cfg.mean is None) != (cfg.std is None):
        raise ValueError("student.mean and student.std: set both or neither (null: the pretrained backbone's)")
    with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
        model = build_student(cfg, num_classes)
    if not cfg.pretrained:
        mean, std, where = _normalisation(cfg, None, None)
        return StudentInit("random", {}, [], [], [], mean, std, where)
    path, hub_config = _weights_file(cfg, model)
    checkpoint = read_state_dict(path, f"student.pretrained={cfg.pretrained}")
    weights, replaced, missing, unexpected = match_weights(model.state_dict(), checkpoint, num_classes,
                                                           f"student.pretrained={cfg.pretrained} ({path})", cfg.name)
    mean, std, where = _normalisation(cfg, model, hub_config)
    from zmdist.provenance import hash_file

    init = StudentInit(cfg.pretrained, weights, replaced, missing, unexpected, mean, std, where, path, hash_file(path))
    log.info("student %s starts from %s (%s): %d tensors loaded, replaced %s, missing %s, unexpected %s; "
             "normalised with mean %s, std %s (%s)", cfg.name, cfg.pretrained, path, len(weights), replaced or "none",
             missing or "none", unexpected or "none", mean, std, where)
    if missing or unexpected:
        log.warning("student.pretrained=%s: %d of the student's tensors are not in the checkpoint (left at their "
                    "initialisation: %s) and %d of the checkpoint's are not the student's (unused: %s)",
                    cfg.pretrained, len(missing), missing[:5], len(unexpected), unexpected[:5])
    return init


def _weights_file(cfg: StudentConfig, model: nn.Module) -> tuple[Path, dict[str, Any] | None]:
    """The weights file ``student.pretrained`` names, and the hub repo's pretrained config (None if none)."""
    source = cfg.pretrained
    if source == "timm":
        if not cfg.name.startswith("timm:"):
            raise ValueError(f"student.pretrained=timm: {cfg.name} is not a timm student; give a weights file or "
                             "hf-hub:ORG/REPO")
        pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        if not pretrained_cfg.get("hf_hub_id"):
            where = pretrained_cfg.get("url") or "nowhere timm knows"
            raise ValueError(f"student.pretrained=timm: timm keeps no hub weights for {cfg.name[5:]} (they are at "
                             f"{where}); name a tag that has them (timm:ARCH.TAG, `timm.list_pretrained()`), or "
                             "download the weights and give the file")
        path, _ = _hub_weights(pretrained_cfg["hf_hub_id"], cfg.cache_dir, "student.pretrained=timm",
                               pretrained_cfg.get("hf_hub_filename"))
        return path, None
    if source.startswith("hf-hub:"):
        return _hub_weights(source[len("hf-hub:"):], cfg.cache_dir, f"student.pretrained={source}")
    path = Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"student.pretrained: {path} is not a file (give a local .safetensors or .pt state "
                                "dict, hf-hub:ORG/REPO, timm for a timm student's own weights, or leave it empty)")
    return path, None


def _hub_weights(repo: str, cache_dir: str, option_text: str,
                 filename: str | None = None) -> tuple[Path, dict[str, Any] | None]:
    """A hub repo's weights file (``ORG/REPO[@REVISION]``; safetensors preferred) from the cache or the hub,
    and the ``pretrained_cfg`` of its ``config.json`` when it has one."""
    from huggingface_hub import hf_hub_download

    repo_id, _, revision = repo.partition("@")
    fetch = lambda name: Path(hf_hub_download(repo_id, name, revision=revision or None,  # noqa: E731
                                              cache_dir=cache_dir or None))
    reasons = []
    for name in [filename] if filename else HUB_WEIGHTS:
        try:
            weights = fetch(name)
            break
        except Exception as err:  # not in the cache offline, not in the repo, no such repo, no network
            reasons.append(f"{name}: {str(err).splitlines()[0] if str(err) else type(err).__name__}")
    else:
        raise FileNotFoundError(
            f"{option_text}: no weights in {repo} ({'; '.join(reasons)}). Without hub access, download the repo "
            f"once where there is (`hf download {repo_id} --cache-dir DIR`) and run with HF_HUB_OFFLINE=1 and "
            "student.cache_dir=DIR (or leave it empty and use the default HF_HUB_CACHE on both machines)")
    try:
        config = json.loads(fetch(HUB_CONFIG).read_text())
    except Exception:  # a repo of weights alone: the normalisation then comes from elsewhere (_normalisation)
        return weights, None
    pretrained_cfg = config.get("pretrained_cfg") if isinstance(config, dict) else None
    if not isinstance(pretrained_cfg, dict):
        return weights, None
    return weights, {**pretrained_cfg, "from": f"{HUB_CONFIG} of hf-hub:{repo}"}


def read_state_dict(path: Path, option_text: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: safetensors, or a torch file read with ``weights_only=True`` (a plain
    state dict, or one under ``state_dict``/``model``); ``module.`` prefixes (DDP) are dropped."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except Exception as err:
            raise ValueError(f"{option_text}: {path} is not a readable safetensors file ({err})") from err
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ValueError(f"{option_text}: {path} holds Python objects besides tensors, which zmdist does not "
                             "unpickle (torch.load(weights_only=True) refused it); save the state dict alone, e.g. "
                             "safetensors.torch.save_file(model.state_dict(), 'weights.safetensors')") from err
        except Exception as err:
            raise ValueError(f"{option_text}: {path} is not a readable torch checkpoint ({err})") from err
    if isinstance(state, dict) and not _all_tensors(state):
        state = next((state[k] for k in WRAPPERS if isinstance(state.get(k), dict) and _all_tensors(state[k])), state)
    if not isinstance(state, dict) or not state or not _all_tensors(state):
        what = sorted(map(str, state))[:8] if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{option_text}: {path} is not a state dict of tensors (found {what}); save "
                         "model.state_dict() (safetensors.torch.save_file or torch.save)")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _all_tensors(state: dict) -> bool:
    return all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())


def match_weights(model_state: dict[str, torch.Tensor], checkpoint: dict[str, torch.Tensor], num_classes: int,
                  where: str, name: str) -> tuple[dict[str, torch.Tensor], list[str], list[str], list[str]]:
    """(tensors the student takes as they are, classifier keys replaced, keys missing, keys unexpected).

    A key whose shapes differ is the classifier (replaced) when the student's tensor has ``num_classes`` rows
    and the rest of the shape equals the checkpoint's; any other difference refuses the checkpoint."""
    weights, replaced, other = {}, [], []
    for key, tensor in checkpoint.items():
        if key not in model_state:
            continue
        mine = model_state[key]
        if tuple(tensor.shape) == tuple(mine.shape):
            weights[key] = tensor
        elif mine.dim() >= 1 and tensor.dim() == mine.dim() and mine.shape[0] == num_classes \
                and tuple(tensor.shape[1:]) == tuple(mine.shape[1:]):
            replaced.append(key)
        else:
            other.append(f"{key}: {tuple(tensor.shape)} in the checkpoint, {tuple(mine.shape)} in the student")
    if other:
        raise ValueError(f"{where}: {len(other)} tensors have other shapes than {name}'s (e.g. {other[0]}): the "
                         "checkpoint is of another architecture or input size; match student.name, student.img_size "
                         "and student.options (e.g. patch_size) to it")
    if not weights:
        raise ValueError(f"{where}: none of its {len(checkpoint)} tensors is one of {name}'s (e.g. checkpoint "
                         f"{sorted(checkpoint)[:3]}, student {sorted(model_state)[:3]}): is it a checkpoint of "
                         f"{name}?")
    missing = sorted(k for k in model_state if k not in checkpoint)
    unexpected = sorted(k for k in checkpoint if k not in model_state)
    return weights, sorted(replaced), missing, unexpected


def _normalisation(cfg: StudentConfig, model: nn.Module | None,
                   hub_config: dict[str, Any] | None) -> tuple[list[float], list[float], str]:
    """(mean, std, where from): ``student.mean``/``std`` when set; else for a pretrained student its
    backbone's (the hub repo's ``config.json``, else timm's pretrained config of the model); else 0.5."""
    if cfg.mean is not None and cfg.std is not None:
        return list(cfg.mean), list(cfg.std), "student.mean/student.std"
    if not cfg.pretrained:
        return list(MEAN), list(STD), "zmdist's default 0.5 (random weights; USB's CIFAR normalisation)"
    candidates = [(getattr(model, "pretrained_cfg", None), f"timm's pretrained config of {cfg.name[5:]}")]
    if hub_config is not None:
        candidates.insert(0, (hub_config, hub_config["from"]))
    for config, where in candidates:
        if config and config.get("mean") and config.get("std"):
            return [float(v) for v in config["mean"]], [float(v) for v in config["std"]], where
    log.warning("student.pretrained=%s: no pretrained config says how %s's backbone normalised its inputs; using "
                "0.5/0.5 (set student.mean and student.std to its training values)", cfg.pretrained, cfg.name)
    return list(MEAN), list(STD), "zmdist's default 0.5 (no pretrained config; set student.mean/std)"
