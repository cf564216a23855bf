"""Quickstart part "transfer": the transferability scores of the quickstart's own task.

``zmdist transfer score`` on the prepared real-digit embeddings (train split, the quickstart's
templates): IIMM with its inter- and intra-modal terms, H-score and LogME, in a few seconds. Fitting
scores to measured gain and forgetting needs several fine-tuned tasks, which does not fit the part's
budget: that is the worked example (``benchmarks/transfer_worked_example.py``, about 10 minutes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from zmdist.config import load_config
from zmdist.demo.digits_pipeline import fresh
from zmdist.stages import transfer

if TYPE_CHECKING:
    from zmdist.demo.parts import PartContext


def run_part(ctx: "PartContext") -> dict[str, Any]:
    fresh(ctx.out / "score")  # scored afresh: a rerun's teacher may differ (transfer refuses other inputs)
    result = transfer.run(load_config(transfer.Config, None, [
        f"embeddings={ctx.embeddings}", f"shards={ctx.shards}", f"templates={ctx.templates}", "task=digits",
        f"progress={ctx.progress}"]), ctx.out / "score")
    return {"scores": result["scores"], "num_images": result["num_images"], "split": result["split"],
            "score_seconds": result["score_seconds"]}


def format_rows(results: dict[str, Any]) -> list[str]:
    s = results["scores"]
    return [
        f"  transferability of this task ({results['split']} split, {results['num_images']:,} images; "
        "`zmdist transfer score`):",
        f"    IIMM {s['iimm']:.4f} (inter {s['inter']:.4f}, intra {s['intra']:.4f})   "
        f"H-score {s['h_score']:.3f}   LogME {s['logme']:.4f}",
    ]
