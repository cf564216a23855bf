"""``zmdist export``: the student of a ``zmdist train`` run as a plain model (``model.safetensors`` +
``config.json``), loadable without zmdist's training wrappers.

``which=final`` (the default) exports the model the run reports as its result (``accuracy`` in its
summary: the last phase's final weights, ZeroMatch's stage 1); ``which=best`` the last phase's
``best.safetensors`` (selected on the test split's labels: optimistic). A ``timm:`` student loads with timm
alone (``timm.create_model(config["architecture"], num_classes=C, **config["model_args"])`` +
``load_state_dict(safetensors.torch.load_file(DIR/model.safetensors))``); every student loads with
``zmdist.load_student(DIR)``, preprocessing included. ``zmdist train`` writes this export of its result
into ``OUT/export`` itself. The formats are in ``zmdist.models.export``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from zmdist.config import option, to_dict
from zmdist.models.export import describe, export_run
from zmdist.provenance import provenance, write_run_files
from zmdist.stages.outdir import own_output

NAME = "export"
HELP = "export a trained student as model.safetensors + config.json (plain model, preprocessing, accuracy)"
log = logging.getLogger("zmdist")


@dataclass
class Config:
    run: str = option(help="output folder of a `zmdist train` run")
    which: Literal["final", "best"] = option("final", "final: the run's reported model; best: its best.safetensors "
                                                      "(selected on test labels: optimistic)")


def run(cfg: Config, out: Path) -> dict[str, Any]:
    if out.resolve() == Path(cfg.run).resolve():
        raise ValueError(f"--out {out} is the run folder itself: its summary.json and config.yaml would be replaced; "
                         "give the export its own folder (a train run already holds one in RUN/export)")
    with own_output(out, NAME):
        return _export(cfg, out)


def _export(cfg: Config, out: Path) -> dict[str, Any]:
    exported = export_run(Path(cfg.run), out, cfg.which)
    log.info("export: %s -> %s", describe(exported), out)
    results = {"stage": NAME, "student": exported["student"], "accuracy": exported["accuracy"],
               "weights": exported["run"]["weights"]}
    write_run_files(out, to_dict(cfg), {**results, **provenance(seed=exported["run"]["seed"],
                                                                classes=exported["label_names"])})
    return results
