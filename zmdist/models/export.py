"""A trained student as a plain model anyone can load: ``model.safetensors`` + ``config.json``.

Why: a ``zmdist train`` run keeps its weights per phase (``OUT/stage1/final.safetensors`` for ZeroMatch)
with the training wrapper's key names (``DualHead``: ``backbone.*``, ``main.*``, ``aux.*``) and nothing
that says how to build the model or feed it. An export folder holds

- ``model.safetensors``: the plain model's state dict (ZeroMatch's auxiliary head dropped, ``main`` put
  back where the model's classifier was), so ``timm.create_model(arch, num_classes=C, **model_args)``
  (or the student's own constructor) loads it with ``load_state_dict``;
- ``config.json``: how to build it (``student``, ``architecture``, ``model_args``, ``num_classes``,
  ``label_names``), how its inputs were prepared in the run's evaluation (``pretrained_cfg``:
  ``input_size``, ``interpolation``, ``mean``, ``std`` (the run's, e.g. a pretrained backbone's), and the
  crop: below 96 px ``crop_pct`` 1.0 and ``crop_mode`` "squash", i.e. a plain resize, no crop; from 96 px
  ``crop_pct`` 0.875 and ``crop_mode`` "center", i.e. the shorter side resized to ``floor(size / 0.875)``
  and the centre ``size`` cropped), the run's test accuracy of these weights and the zmdist version.
  The layout is timm's Hub ``config.json``, so a ``timm:`` student also loads with
  ``timm.create_model("local-dir:DIR", pretrained=True)`` and timm's ``resolve_data_config`` +
  ``create_transform`` rebuild the same evaluation transform.

``load_student(DIR)`` builds any student (registered, timm or torchvision) in eval mode with its
preprocessing as ``model.preprocess`` (PIL image -> tensor, the run's evaluation view).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Literal

import torch
import torchvision.transforms as T
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

from zmdist import __version__
from zmdist.atomic import atomic_path, atomic_write_text
from zmdist.data.images import to_rgb
from zmdist.jsonfile import read_json
from zmdist.models import DualHead, create_student
from zmdist.provenance import hash_strings
from zmdist.models.student_init import StudentConfig, student_kwargs
from zmdist.train.augment import CROP_RATIO, MEAN, STD, make_views

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "zmdist-student"
FORMAT_VERSION = 1
Which = Literal["final", "best"]


# --- weights -------------------------------------------------------------------------------------------
def plain_weights(student: str, num_classes: int, model_args: dict[str, Any], weights: dict[str, torch.Tensor],
                  origin: Path) -> dict[str, torch.Tensor]:
    """``weights`` with the plain model's key names: returned as they are when they already are the
    model's, unwrapped when they are ``DualHead(model)``'s (ZeroMatch's stage 1); anything else is refused."""
    model = create_student(student, num_classes, **model_args)
    if set(weights) == set(model.state_dict()):
        return weights
    dual = DualHead(model)
    if set(weights) != set(dual.state_dict()):
        unknown = sorted(set(weights) - set(dual.state_dict()))[:3]
        raise ValueError(f"{origin}: its tensors are not those of {student} with {num_classes} classes and options "
                         f"{model_args} (e.g. unexpected {unknown}): the run's config.yaml does not describe these "
                         "weights; export the run folder the weights came from")
    dual.load_state_dict(weights)
    return {k: v.detach().contiguous() for k, v in dual.unwrap().state_dict().items()}


# --- preprocessing ---------------------------------------------------------------------------------------
def eval_preprocessing(img_size: int, mean: list[float] | tuple[float, ...] = MEAN,
                       std: list[float] | tuple[float, ...] = STD) -> dict[str, Any]:
    """The run's evaluation view (``make_views(img_size, mean=, std=).eval``, read from the transform itself,
    so what is recorded is what training applied) as timm ``pretrained_cfg`` fields."""
    steps = list(make_views(img_size, hflip=False, mean=mean, std=std).eval.transforms)
    kinds = [type(s) for s in steps]
    if kinds == [T.Resize, T.ToTensor, T.Normalize]:  # below 96 px: a plain resize
        resize, _, normalize = steps
        size, crop = list(resize.size), {"crop_pct": 1.0, "crop_mode": "squash"}
    elif kinds == [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]:  # from 96 px: shorter side, centre crop
        resize, center, _, normalize = steps
        size, crop = list(center.size), {"crop_pct": CROP_RATIO, "crop_mode": "center"}
        if resize.size != math.floor(size[0] / CROP_RATIO):  # timm's scale size: floor(size / crop_pct)
            raise RuntimeError(f"the evaluation view's resize ({resize}) is not timm's for crop_pct {CROP_RATIO}: "
                               "teach zmdist.models.export to record it")
    else:
        raise RuntimeError(f"the evaluation view changed ({steps}): teach zmdist.models.export to record it")
    return {"input_size": [3, *size], "interpolation": resize.interpolation.value,
            "mean": [float(v) for v in normalize.mean], "std": [float(v) for v in normalize.std], **crop}


class Preprocess:
    """PIL image (any mode; converted to RGB as ``zmdist shard`` does) -> normalised CxHxW float tensor:
    resize to ``input_size`` (crop_mode "squash": no crop, aspect ratio not kept; "center": the shorter side
    to ``floor(height / crop_pct)``, then the centre ``input_size``), ToTensor, Normalize(mean, std). A
    module-level class so DataLoader workers can pickle it."""

    def __init__(self, pretrained_cfg: dict[str, Any]):
        _, height, width = pretrained_cfg["input_size"]
        interpolation = T.InterpolationMode(pretrained_cfg["interpolation"])
        if pretrained_cfg.get("crop_mode", "squash") == "center":
            resize = [T.Resize(math.floor(height / pretrained_cfg["crop_pct"]), interpolation=interpolation),
                      T.CenterCrop((height, width))]
        else:
            resize = [T.Resize((height, width), interpolation=interpolation)]
        self.transform = T.Compose([
            *resize,
            T.ToTensor(),
            T.Normalize(pretrained_cfg["mean"], pretrained_cfg["std"]),
        ])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(to_rgb(image)[0])

    def __repr__(self) -> str:
        return f"Preprocess(RGB, {self.transform})"


# --- export --------------------------------------------------------------------------------------------
def _phase_folder(run: Path, phase: str) -> Path:
    """Where ``zmdist train`` wrote a phase: its own sub-folder, or the run folder for a one-phase method
    (whose phase the summary calls ``main``)."""
    return run if phase == "main" else run / phase


def _run_classes(run: Path, summary: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The class names of a run: its summary's (newer runs), else the shards' manifest, checked against
    the class-name hash the run recorded."""
    if "classes" in summary:
        return list(summary["classes"])
    from zmdist.data.manifest import Manifest

    try:
        classes = Manifest.load(config["shards"]).classes
    except (OSError, ValueError) as err:
        raise FileNotFoundError(f"{run}/summary.json lists no class names and the run's shards {config['shards']} "
                                f"cannot be read ({err}): make them reachable at that path to export") from err
    if hash_strings(classes) != summary.get("classes_hash"):
        raise ValueError(f"the class names in {config['shards']} are not those {run} was trained with "
                         "(classes_hash differs): the shard set was rebuilt; export needs the original one")
    return classes


def _checkpoint_accuracy(summary: dict[str, Any], phase: str, which: Which) -> dict[str, Any]:
    """Test top-1 of the exported checkpoint as the run measured it: the last phase's final evaluation,
    or the evaluation at which ``best.safetensors`` was written."""
    result = summary["phases"][phase]
    final = result["final"]
    if which == "final":
        top1, step = final.get("top1"), result["steps_run"]
    else:
        step = result["best_step"]
        top1 = next((h.get("top1") for h in result["history"] if h["step"] == step), None)
    return {"top1": top1, "split": final.get("split"), "samples": final.get("samples"), "checkpoint": which,
            "step": step}


def _run_student(config: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(student name, constructor keyword arguments) of a run's ``config.yaml``: its ``student`` section, or
    the ``student`` name and ``student_options`` of runs written before the section."""
    section = config["student"]
    if isinstance(section, dict):
        return section["name"], student_kwargs(StudentConfig(**section))
    return section, dict(config.get("student_options") or {})


def export_run(run: Path, out: Path, which: Which = "final") -> dict[str, Any]:
    """Export the ``which`` student of the ``zmdist train`` run in ``run`` into ``out``; return its config.

    The last phase's weights are exported (the one the run reports as its result; ZeroMatch: stage 1)."""
    run = Path(run)
    for name in ("summary.json", "config.yaml"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"--run {run}: no {name}; give the output folder of a finished `zmdist train`")
    summary = read_json(run / "summary.json", f"rerun `zmdist train --out {run}` to rewrite it")
    if summary.get("stage") != "train":
        raise ValueError(f"--run {run} holds the results of `zmdist {summary.get('stage')}`, not of `zmdist train`")
    config = yaml.safe_load((run / "config.yaml").read_text())
    phase = list(summary["phases"])[-1]
    source = _phase_folder(run, phase) / f"{which}.safetensors"
    if not source.is_file():
        raise FileNotFoundError(f"{source} is missing: `zmdist train --out {run}` did not finish writing it; rerun "
                                "it (it resumes)")
    classes = _run_classes(run, summary, config)
    student, model_args = _run_student(config)
    normalisation = summary.get("student_init") or {"mean": MEAN, "std": STD}  # older runs: always 0.5
    weights = plain_weights(student, len(classes), model_args, load_file(str(source)), source)
    library, _, arch = student.partition(":") if ":" in student else ("zmdist", "", student)
    exported = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "student": student,
        "library": library,
        "architecture": arch if library == "timm" else student,
        "model_args": model_args,
        "num_classes": len(classes),
        "label_names": classes,
        "pretrained_cfg": eval_preprocessing(int(config["img_size"]), normalisation["mean"], normalisation["std"]),
        "accuracy": _checkpoint_accuracy(summary, phase, which),
        "run": {"folder": str(run.resolve()), "weights": str(source.relative_to(run)), "method": summary.get("method"),
                "git_commit": summary.get("git_commit"), "seed": summary.get("seed")},
        "zmdist_version": __version__,
    }
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, str(tmp),
                  metadata={"format": FORMAT, "student": student})
    atomic_write_text(out / CONFIG_FILE, json.dumps(exported, indent=2) + "\n")
    return exported


# --- loading -------------------------------------------------------------------------------------------
def read_export_config(folder: Path | str) -> dict[str, Any]:
    """``config.json`` of an export folder, checked to be one."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file() or not (folder / WEIGHTS_FILE).is_file():
        raise FileNotFoundError(f"{folder} is not an exported student (it needs {CONFIG_FILE} and {WEIGHTS_FILE}): "
                                "make one with `zmdist export --run RUN --out DIR`; a train run writes RUN/export")
    config = read_json(path, f"export the run again with `zmdist export --run RUN --out {folder}`")
    if config.get("format") != FORMAT:
        raise ValueError(f"{path} is not a zmdist student config (format {config.get('format')!r}, not {FORMAT!r})")
    if config.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {config['format_version']}: this zmdist reads up to "
                         f"{FORMAT_VERSION}; upgrade zmdist")
    return config


def load_student(folder: Path | str) -> torch.nn.Module:
    """The exported student in ``folder``, in eval mode, on the CPU, with ``model.preprocess`` (a PIL image
    -> tensor callable, the run's evaluation transform) and ``model.label_names``."""
    config = read_export_config(folder)
    model = create_student(config["student"], config["num_classes"], **config["model_args"])
    model.load_state_dict(load_file(str(Path(folder) / WEIGHTS_FILE)))
    model.eval()
    model.preprocess = Preprocess(config["pretrained_cfg"])
    model.label_names = list(config["label_names"])
    return model


def describe(config: dict[str, Any]) -> str:
    """One line for logs: what was exported and how good it was."""
    acc = config["accuracy"]
    top1 = "n/a" if acc["top1"] is None or math.isnan(acc["top1"]) else f"{acc['top1']:.4f}"
    return (f"{config['student']} ({config['num_classes']} classes, {config['pretrained_cfg']['input_size'][1]} px), "
            f"{acc['checkpoint']} weights of step {acc['step']}, top-1 {top1} on split {acc['split']!r}")
