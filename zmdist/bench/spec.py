"""The sweep file of ``zmdist bench``: teachers x datasets x methods x label budgets x seeds, as YAML.

A sweep names its parts once and the grid is their product::

    name: offline
    teachers:  {tiny: {model: zmdist-tiny-vit, recipe: demo-digits}}
    datasets:  {digits: {source: sklearn-digits, shard: {test_fraction: 0.25}, templates: digits}}
    methods:   {fixmatch: {stage: train, options: {method.name: fixmatch}}, ...}
    budgets:   [2, 4]            # labels per class (methods whose stage takes no budget run once)
    seeds:     [0, 1]
    defaults:  {train: {student: cnn-tiny, steps: 100}}   # options of every cell of a stage
    published: {fixmatch: {digits/4: 86.0}}               # published numbers, shown beside ours
    published_source: {fixmatch: "USB, results/usb_cv.csv"}   # where they come from (default: reference)

A cell's options, later wins: ``defaults[stage]`` < the dataset's ``overrides[stage]`` < the method's
``options`` < the method's ``dataset_options[DATASET]`` < what the cell is (its inputs, budget and seed).
``dataset_options`` holds what only one method takes and differs by dataset (a dataset's ``overrides``
reach every method of the stage, and another method's config refuses an option it does not have).
Every option is checked against the stage's own config when the plan is built, so a typo fails before
anything runs. Published numbers are keyed
``DATASET/BUDGET`` (``DATASET`` for methods without a budget), optionally ``/TEACHER`` when the sweep has
several teachers; values are in the report's units (accuracies in %, e.g. 100 - a paper's error rate).
Numbers that are not the paper's own (another codebase's runs of a baseline, say) name their source per
method in ``published_source`` (``METHOD: TEXT``; a method without one is labelled with ``reference``):
the report lists each source with the rows it gives numbers of, and the CSV/JSON carry it per entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from zmdist.config import ConfigError, ConfigFileError, load_config, option


@dataclass
class TeacherSpec:
    model: str = option(help="open_clip model name, hf-hub:org/repo or local-dir:PATH (teacher.model of embed)")
    pretrained: str = option("", "weights tag, checkpoint path or random (teacher.pretrained); empty: what the "
                                 "recipe makes, or nothing for hf-hub:/local-dir: models")
    recipe: Literal["", "demo-digits"] = option("", "make the weights first: demo-digits = the quickstart's "
                                                    "synthetic-digit teacher (offline, cached)")
    recipe_steps: int = option(800, "demo-digits: pretraining steps", min=1)
    options: dict[str, Any] = option(factory=dict, help="other teacher.* options of embed (precision, cache_dir, ...)")


@dataclass
class DatasetSpec:
    source: str = option("", "a shard source (imagefolder:PATH, csv:FILE, cifar100:ROOT, sklearn-digits, ...); "
                             "the sweep shards it once")
    shards: str = option("", "an existing shard set instead of source (folder, URL or pipe: template)")
    shard: dict[str, Any] = option(factory=dict, help="options of the shard step (shard_size, test_fraction, ...)")
    templates: str | list[str] = option("simple", "prompt templates of the zero-shot pseudolabels (a set name or a list)")
    budgets: list[int] | None = option(None, "labels per class on this dataset instead of the sweep's (a method's "
                                             "own budgets win)")
    images: int = option(0, "training images, for the dry run's cost estimate before the data is sharded "
                            "(0: read the manifest when there is one)", min=0)
    overrides: dict[str, dict[str, Any]] = option(factory=dict, help="per stage, options of every cell on this "
                                                                      "dataset (e.g. prompt-tune: {templates: ...})")


@dataclass
class MethodSpec:
    stage: str = option(help="what a cell of this method runs: train, prompt-tune, al-sim, transfer, or zero-shot "
                             "(the teacher's own accuracy, read from the pseudolabel step)")
    options: dict[str, Any] = option(factory=dict, help="the stage's options for this method")
    label: str = option("", "name in the report (default: the method's key)")
    budgets: list[int] | None = option(None, "labels per class of this method instead of the sweep's; [] = run "
                                             "once without a budget (e.g. unsupervised prompt tuning)")
    dataset_options: dict[str, dict[str, Any]] = option(
        factory=dict, help="per dataset, options of this method's cells on it (win over options), for what only "
                           "this method takes and differs by dataset (e.g. zeromatch's method.stage0_steps)")


@dataclass
class SlurmSpec:
    """How ``launcher=slurm`` submits: any option of ``zmdist submit`` (partition, time, gpus_per_node, ...)
    for the shared job and for every cell's array task; ``cells`` overrides them for the cells."""

    shared: dict[str, Any] = option(factory=dict, help="submit options of the shared-stages job")
    cells: dict[str, Any] = option(factory=dict, help="submit options of each cell's array task")


@dataclass
class Sweep:
    name: str = option(help="the sweep's name (titles the report)")
    description: str = option("", "what the sweep reproduces, and from which paper")
    teachers: dict[str, TeacherSpec] = option(factory=dict, help="teachers by name")
    datasets: dict[str, DatasetSpec] = option(factory=dict, help="datasets by name")
    methods: dict[str, MethodSpec] = option(factory=dict, help="methods by name (rows of the report)")
    budgets: list[int] = option(factory=lambda: [4], help="labels per class (columns of the report)")
    seeds: list[int] = option(factory=lambda: [0], help="seeds of every cell (mean and std in the report)")
    embed: dict[str, Any] = option(factory=dict, help="options of every embed step (batch_size, num_workers, ...)")
    pseudolabel: dict[str, Any] = option(factory=dict, help="options of every pseudolabel step")
    defaults: dict[str, dict[str, Any]] = option(factory=dict, help="per stage, options of every cell of that stage")
    published: dict[str, dict[str, float]] = option(factory=dict, help="published numbers: method -> "
                                                                        "DATASET[/BUDGET][/TEACHER] -> accuracy (%)")
    reference: str = option("", "where the published numbers come from (paper, table)")
    published_source: dict[str, str] = option(factory=dict, help="per method, where its published numbers come "
                                                                  "from when not from reference (e.g. another "
                                                                  "codebase's runs)")
    gpu: str = option("H100/H200", "GPU kind of the dry run's cost estimate (A100 or H100/H200)")
    mfu: float = option(0.4, "assumed model FLOP utilisation of the dry run's cost estimate", min=0.0,
                        min_exclusive=True, max=1.0)
    slurm: SlurmSpec = option(factory=SlurmSpec, help="submit options for launcher=slurm")


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and check a sweep file: unknown keys, wrong types, empty grids and published numbers that name
    no cell are errors naming the key (the stages' own options are checked when the plan is built). So
    are a key given twice and a grid value listed twice: either would be one entry or cell counted as
    two, or one kept and the other silently dropped."""
    from zmdist.bench.kinds import CELL_KINDS

    try:
        sweep = load_config(Sweep, path, overrides, what="sweep")
    except ConfigFileError:  # already names the file (and the line)
        raise
    except ConfigError as err:
        raise ConfigError(f"sweep {path}: {err}") from None
    for what in ("teachers", "datasets", "methods"):
        if not getattr(sweep, what):
            raise ConfigError(f"sweep {path}: '{what}' is empty: name at least one")
        for name in getattr(sweep, what):
            if "/" in name:  # names are the parts of step ids, folders and published keys
                raise ConfigError(f"sweep {path}: {what}.{name}: a name cannot contain '/'; rename it")
    if not sweep.seeds:
        raise ConfigError(f"sweep {path}: 'seeds' is empty")
    grids = {"budgets": sweep.budgets, "seeds": sweep.seeds,
             **{f"datasets.{n}.budgets": d.budgets for n, d in sweep.datasets.items()},
             **{f"methods.{n}.budgets": m.budgets for n, m in sweep.methods.items()}}
    for key, values in grids.items():
        repeated = sorted({v for v in values or [] if values.count(v) > 1})
        if repeated:  # a repeated value would be one cell counted twice, not two runs
            raise ConfigError(f"sweep {path}: {key}: {', '.join(map(str, repeated))} listed more than once in "
                              f"{values}; list each value once")
    labels: dict[str, str] = {}
    for name, method in sweep.methods.items():
        label = method.label or name
        if label in labels:  # the report's rows are labels: one would hide the other
            raise ConfigError(f"sweep {path}: methods.{name}: label {label!r} is also the label of "
                              f"methods.{labels[label]}; give each method its own label")
        labels[label] = name
    from zmdist.data.sources import SOURCES

    for name, spec in sweep.datasets.items():
        if bool(spec.source) == bool(spec.shards):
            raise ConfigError(f"sweep {path}: datasets.{name}: give exactly one of source (to shard) or shards "
                              "(an existing shard set)")
        scheme = spec.source.split(":", 1)[0]
        if spec.source and scheme not in SOURCES:
            raise ConfigError(f"sweep {path}: datasets.{name}.source: no data source {scheme!r}; registered: "
                              f"{', '.join(SOURCES.names())}")
    for name, method in sweep.methods.items():
        for dataset in method.dataset_options:
            if dataset not in sweep.datasets:
                raise ConfigError(f"sweep {path}: methods.{name}.dataset_options.{dataset}: no such dataset "
                                  f"(datasets: {', '.join(sweep.datasets)})")
        if method.stage not in CELL_KINDS:
            raise ConfigError(f"sweep {path}: methods.{name}.stage: {method.stage!r} is not a cell kind; known: "
                              f"{', '.join(CELL_KINDS.names())}")
        if CELL_KINDS.get(method.stage).budget_key and method.budgets is None and not sweep.budgets:
            raise ConfigError(f"sweep {path}: methods.{name} takes a label budget but 'budgets' is empty")
    for method, numbers in sweep.published.items():
        if method not in sweep.methods:
            raise ConfigError(f"sweep {path}: published.{method}: no such method (methods: {', '.join(sweep.methods)})")
        for key in numbers:
            check_published_key(sweep, method, key, path)
    for method, source in sweep.published_source.items():
        if method not in sweep.published:  # a label for numbers that are not there is a typo or a leftover
            raise ConfigError(f"sweep {path}: published_source.{method}: {method!r} has no published numbers "
                              f"(published: {', '.join(sweep.published) or 'none'}); remove it or add its numbers")
        if not source.strip():
            raise ConfigError(f"sweep {path}: published_source.{method} is empty: say where the numbers come from")
    return sweep


def method_budgets(sweep: Sweep, method: str, dataset: str | None = None) -> list[int | None]:
    """The label budgets of the method's cells (on ``dataset``): the method's ``budgets``, else the
    dataset's, else the sweep's; [None] for a stage without a budget or ``budgets: []``."""
    from zmdist.bench.kinds import CELL_KINDS

    spec = sweep.methods[method]
    if not CELL_KINDS.get(spec.stage).budget_key or spec.budgets == []:
        return [None]
    if spec.budgets is not None:
        return list(spec.budgets)
    if dataset is not None and sweep.datasets[dataset].budgets is not None:
        return list(sweep.datasets[dataset].budgets)
    return list(sweep.budgets)


def check_published_key(sweep: Sweep, method: str, key: str, path: str | Path) -> None:
    """``DATASET[/BUDGET][/TEACHER]`` must name a dataset, a budget of the sweep and a teacher."""
    parts = key.split("/")
    budgets = method_budgets(sweep, method, parts[0] if parts[0] in sweep.datasets else None)
    takes_budget = budgets != [None]
    wanted = 1 + takes_budget
    where = f"sweep {path}: published.{method}.{key}"
    if len(parts) not in (wanted, wanted + 1):
        form = "DATASET/BUDGET[/TEACHER]" if takes_budget else "DATASET[/TEACHER]"
        raise ConfigError(f"{where}: write the key as {form}")
    if parts[0] not in sweep.datasets:
        raise ConfigError(f"{where}: no dataset {parts[0]!r} (datasets: {', '.join(sweep.datasets)})")
    if takes_budget and (not parts[1].isdigit() or int(parts[1]) not in budgets):
        raise ConfigError(f"{where}: {parts[1]!r} is not one of the method's budgets {budgets}")
    if len(parts) == wanted + 1 and parts[-1] not in sweep.teachers:
        raise ConfigError(f"{where}: no teacher {parts[-1]!r} (teachers: {', '.join(sweep.teachers)})")
