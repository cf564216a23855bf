"""Quickstart part "select": which digits to label, chosen from the teacher's embeddings before any label exists.

1. ``zmdist select strategy=centroid`` and ``strategy=random`` each choose ``labels_per_class x classes``
   training keys (seed ``ctx.seeds[0]``), the same budget as the quickstart's students;
2. a ZeroMatch student (the quickstart's recipe) is trained on each key file through
   ``zmdist train labelled_keys=FILE``: the chain select -> train, with only the labelled set differing;
3. ``zmdist al-sim`` on the same embeddings, shortened to fit the part's budget (one seed,
   ``AL_ROUNDS`` rounds): random / centroid / UP-DP initial pools, then DropQuery or random queries,
   a dropout linear probe per round (configs/al-sim-digits.yaml is the full protocol).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zmdist.config import load_config
from zmdist.data.manifest import Manifest
from zmdist.demo.digits_pipeline import fresh
from zmdist.demo.parts import train
from zmdist.stages import al_sim, select

if TYPE_CHECKING:
    from zmdist.demo.parts import PartContext

AL_ROUNDS = 4
AL_INITS = ["random", "centroid", "updp"]
AL_QUERIES = ["dropquery", "random"]
AL_PROBE_STEPS = 100  # probe steps per round (al-sim's default 200, halved for the part's time budget)
AL_UPDP_STEPS = 300  # UP-DP's training steps per updp cell (select's default)


def run_part(ctx: "PartContext") -> dict[str, Any]:
    seed = ctx.seeds[0]
    classes = len(Manifest.load(ctx.shards).classes)
    budget = ctx.labels_per_class * classes
    students: dict[str, Any] = {}
    for strategy in ("centroid", "random"):
        folder = ctx.out / f"select-{strategy}"
        fresh(folder)  # a rerun picks afresh from the rebuilt embeddings (select refuses other settings)
        chosen = select.run(load_config(select.Config, None, [
            f"embeddings={ctx.embeddings}", f"shards={ctx.shards}", f"strategy={strategy}", f"budget={budget}",
            f"seed={seed}", f"progress={ctx.progress}"]), folder)
        run = train(ctx, ctx.out / f"zeromatch-{strategy}", [
            *ctx.student_overrides("zeromatch", seed), f"shards={ctx.shards}", f"pseudolabels={ctx.pseudolabels}",
            f"labelled_keys={folder / select.LABELLED_FILE}"])
        students[strategy] = {"accuracy": run["accuracy"], "class_weighted_accuracy": run["class_weighted_accuracy"],
                              "classes_covered": chosen["classes_covered"], "keys": chosen["labelled_keys_file"]}
    sim = al_sim.run(load_config(al_sim.Config, None, [
        f"embeddings={ctx.embeddings}", f"shards={ctx.shards}", f"inits=[{','.join(AL_INITS)}]",
        f"strategies=[{','.join(AL_QUERIES)}]", f"seeds=[{seed}]", f"rounds={AL_ROUNDS}",
        f"probe.steps={AL_PROBE_STEPS}", f"updp.steps={AL_UPDP_STEPS}", f"progress={ctx.progress}"]),
        ctx.out / "al-sim")
    return {"seed": seed, "budget": budget, "classes": classes, "zeromatch": students,
            "al_sim": {"rounds": AL_ROUNDS, "labelled_per_round": [p["labelled"] for p in
                                                                   next(iter(sim["class_weighted_accuracy"].values()))],
                       "class_weighted_accuracy": {name: [p["mean"] for p in points] for name, points in
                                                   sim["class_weighted_accuracy"].items()},
                       "plot": sim["plot"], "csv": sim["csv"]}}


def format_rows(results: dict[str, Any]) -> list[str]:
    zm = results["zeromatch"]
    sim = results["al_sim"]
    lines = [f"  choosing what to label (part select): ZeroMatch with {results['budget']} chosen labels, "
             f"seed {results['seed']}, test split",
             *(f"    {name + '-chosen labels':<24}{row['accuracy']:.3f}   ({row['classes_covered']}/"
               f"{results['classes']} classes labelled)" for name, row in zm.items()),
             f"  al-sim: linear probe on teacher embeddings, class-weighted accuracy at "
             f"{', '.join(str(n) for n in sim['labelled_per_round'])} labels (1 seed):"]
    for name, values in sim["class_weighted_accuracy"].items():
        lines.append(f"    {name:<24}" + "  ".join(f"{v:.3f}" for v in values))
    return lines
