"""A sweep as steps: the shared stages (teacher recipe, shard, embed, pseudolabel) once each, then the cells.

Every step is one command (``python -m zmdist STAGE --out DIR key=value ...``, or a teacher recipe) with
its own output folder, named by what it depends on: a shared step's folder carries a hash of its options
and of its inputs' keys, so embeddings are keyed by teacher + dataset and pseudolabels by teacher + dataset
+ prompts, and a grid of 4 methods x 5 seeds embeds each dataset once. A cell's folder carries a hash of
its options too, so editing the sweep makes new cells instead of mixing results. A step is done when its
``done`` file exists (the stage's ``summary.json``, written last); nothing else is state.

The plan is written to ``DIR/plan.json`` before anything runs, so a job-array task (``zmdist bench run
... only=cells``) and ``zmdist bench report DIR`` read the same steps the submitting command made.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zmdist.atomic import atomic_write_text
from zmdist.bench.kinds import CELL_KINDS
from zmdist.bench.spec import Sweep, method_budgets
from zmdist.config import ConfigError, flatten, load_config, to_dict
from zmdist.jsonfile import read_json
from zmdist.provenance import hash_json

# teacher recipes (spec.TeacherSpec.recipe) -> the module run as `python -m MODULE --out FILE --model M --steps N`
RECIPES = {"demo-digits": "zmdist.demo.teacher_recipe"}
PLAN_FILE = "plan.json"
PLAN_FORMAT = "zmdist-bench-plan/1"


@dataclass
class Step:
    """One command of the sweep and where its results go."""

    id: str  # "embed/digits/tiny", "cell/zeromatch/digits/tiny/b4/s0"
    stage: str | None  # a zmdist stage, or None for a teacher recipe / a cell read from a shared step
    argv: list[str]  # the command after `python -m` (empty: nothing to run)
    out: str  # the step's output folder
    done: str  # the file whose existence means the step finished
    deps: list[str] = field(default_factory=list)  # ids of the steps that must finish first
    meta: dict[str, Any] = field(default_factory=dict)  # dataset, teacher, method, budget, seed, kind

    @property
    def is_cell(self) -> bool:
        return self.id.startswith("cell/")


@dataclass
class Plan:
    name: str
    out: str
    steps: list[Step]
    sweep: dict[str, Any]  # the resolved sweep file (for the report: labels, published numbers)

    @property
    def shared(self) -> list[Step]:
        return [s for s in self.steps if not s.is_cell]

    @property
    def cells(self) -> list[Step]:
        return [s for s in self.steps if s.is_cell]

    def step(self, step_id: str) -> Step:
        return next(s for s in self.steps if s.id == step_id)

    def save(self) -> Path:
        path = Path(self.out) / PLAN_FILE
        Path(self.out).mkdir(parents=True, exist_ok=True)
        data = {"format": PLAN_FORMAT, "name": self.name, "out": self.out, "sweep": self.sweep,
                "steps": [asdict(s) for s in self.steps]}
        atomic_write_text(path, json.dumps(data, indent=1) + "\n")
        return path

    @classmethod
    def load(cls, folder: str | Path) -> "Plan":
        path = Path(folder) / PLAN_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no sweep plan here; run `zmdist bench SWEEP.yaml --out {folder}` first")
        data = read_json(path, f"rerun `zmdist bench SWEEP.yaml --out {folder}` to write it again")
        if data.get("format") != PLAN_FORMAT:
            raise ValueError(f"{path}: format {data.get('format')!r}, expected {PLAN_FORMAT!r}")
        return cls(data["name"], data["out"], [Step(**s) for s in data["steps"]], data["sweep"])


def as_override(key: str, value: Any) -> str:
    """``key=value`` that ``zmdist.config`` parses back to ``value`` (strings that YAML would read as
    something else, lists and mappings are written as JSON, which is YAML)."""
    if isinstance(value, str) and value != "" and yaml.safe_load(value) == value:
        return f"{key}={value}"
    return f"{key}={json.dumps(value)}"


def _short(value: Any) -> str:
    return hash_json(value)[:8]


def stage_step(step_id: str, stage: str, options: dict[str, Any], out: Path, deps: list[str],
               meta: dict[str, Any]) -> Step:
    """A step running ``zmdist STAGE``; its options are checked against the stage's config now."""
    from zmdist.stages import load_stage

    overrides = [as_override(k, v) for k, v in sorted(flatten(options).items())]
    try:
        load_config(load_stage(stage).Config, None, overrides)
    except ConfigError as err:
        raise ConfigError(f"{step_id} ({stage}): {err}") from None
    argv = ["zmdist", stage, "--out", str(out), *overrides]
    return Step(step_id, stage, argv, str(out), str(out / "summary.json"), deps, meta)


def _teacher_steps(sweep: Sweep, root: Path) -> tuple[list[Step], dict[str, tuple[dict[str, Any], str | None]]]:
    """Recipe steps and, per teacher, (its teacher.* options for embed, the recipe step id or None)."""
    from zmdist.teacher.loading import check_teacher_weights

    steps, teachers = [], {}
    for name, spec in sweep.teachers.items():
        options = {"model": spec.model, "pretrained": spec.pretrained, **spec.options}
        if not spec.recipe:
            check_teacher_weights(options["model"], options["pretrained"], f"teachers.{name}.")
            teachers[name] = (options, None)
            continue
        recipe = {"recipe": spec.recipe, "model": spec.model, "steps": spec.recipe_steps}
        folder = root / "shared" / "teachers" / f"{name}-{_short(recipe)}"
        checkpoint = folder / "teacher.safetensors"
        step_id = f"teacher/{name}"
        argv = [RECIPES[spec.recipe], "--out", str(checkpoint), "--model", spec.model,
                "--steps", str(spec.recipe_steps)]
        steps.append(Step(step_id, None, argv, str(folder), str(checkpoint), [], {"teacher": name}))
        teachers[name] = ({**options, "pretrained": str(checkpoint)}, step_id)
    return steps, teachers


def build_plan(sweep: Sweep, out: Path) -> Plan:
    """Every step of ``sweep`` run into ``out``, shared steps first, each checked against its stage."""
    root = Path(out).resolve()
    steps, teachers = _teacher_steps(sweep, root)
    # per (dataset, teacher): the shared outputs a cell can take, and the ids of the steps that make them
    shared: dict[tuple[str, str], dict[str, tuple[str, str]]] = {}
    for dname, data in sweep.datasets.items():
        if data.source:
            shard_options = {"source": data.source, "progress": False, **data.shard}
            folder = root / "shared" / dname / f"shards-{_short(shard_options)}"
            steps.append(stage_step(f"shard/{dname}", "shard", shard_options, folder, [], {"dataset": dname}))
            shards, shard_dep = str(folder), [f"shard/{dname}"]
        else:
            shards, shard_dep = data.shards, []
        for tname, (teacher_options, recipe_id) in teachers.items():
            embed_options = {"shards": shards, "teacher": teacher_options, "progress": False, **sweep.embed}
            emb = root / "shared" / dname / tname / f"embed-{_short(embed_options)}"
            meta = {"dataset": dname, "teacher": tname}
            deps = shard_dep + ([recipe_id] if recipe_id else [])
            steps.append(stage_step(f"embed/{dname}/{tname}", "embed", embed_options, emb, deps, meta))
            pl_options = {"embeddings": str(emb), "templates": data.templates, **sweep.pseudolabel}
            pl = root / "shared" / dname / tname / f"pseudolabel-{_short(pl_options)}"
            steps.append(stage_step(f"pseudolabel/{dname}/{tname}", "pseudolabel", pl_options, pl,
                                    [f"embed/{dname}/{tname}"], meta))
            shared[(dname, tname)] = {
                "shards": (shards, shard_dep[0] if shard_dep else ""),
                "embeddings": (str(emb), f"embed/{dname}/{tname}"),
                "pseudolabels": (str(pl), f"pseudolabel/{dname}/{tname}"),
            }
    for (dname, tname), outputs in shared.items():
        for mname in sweep.methods:
            for budget in method_budgets(sweep, mname, dname):
                for seed in sweep.seeds:
                    steps.append(_cell(sweep, root, dname, tname, mname, budget, seed, outputs))
    return Plan(sweep.name, str(root), steps, to_dict(sweep))


def _cell(sweep: Sweep, root: Path, dname: str, tname: str, mname: str, budget: int | None, seed: int,
          outputs: dict[str, tuple[str, str]]) -> Step:
    method = sweep.methods[mname]
    kind = CELL_KINDS.get(method.stage)
    cell_id = f"cell/{mname}/{dname}/{tname}/" + (f"b{budget}/" if budget is not None else "") + f"s{seed}"
    meta = {"dataset": dname, "teacher": tname, "method": mname, "budget": budget, "seed": seed,
            "kind": method.stage}
    if kind.stage is None:  # the number is in a shared step's summary: nothing to run
        source, dep = outputs[kind.reads]
        return Step(cell_id, None, [], source, str(Path(source) / "summary.json"), [dep], meta)
    options: dict[str, Any] = {}
    for layer in (sweep.defaults.get(kind.stage, {}), sweep.datasets[dname].overrides.get(kind.stage, {}),
                  method.options, method.dataset_options.get(dname, {})):
        options.update(flatten(layer))
    options.update(kind.fixed)
    options.update({key: outputs[what][0] for key, what in kind.inputs.items()})
    deps = sorted({outputs[what][1] for what in kind.inputs.values()} - {""})
    if budget is not None:
        options[kind.budget_key] = budget
    if kind.seed_key:
        options[kind.seed_key] = [seed] if kind.seed_as_list else seed
    if kind.dataset_key:
        options[kind.dataset_key] = dname
    options.setdefault("progress", False)
    tag = (f"b{budget}-" if budget is not None else "") + f"s{seed}"
    folder = root / "cells" / dname / tname / mname / f"{tag}-{_short(options)}"
    return stage_step(cell_id, kind.stage, options, folder, deps, meta)


def python_command(step: Step) -> list[str]:
    """The process a step runs: this interpreter, ``-m``, the step's argv."""
    return [sys.executable, "-m", *step.argv]
