"""The worked example's parts: its tasks, their CSV for the `csv:` source, the fine-tuning measurement."""

from __future__ import annotations

import numpy as np
import pytest

from zmdist.config import load_config
from zmdist.data.manifest import Manifest
from zmdist.stages import shard
from zmdist.demo.transfer_example import Task, digit_tasks, finetune_task, loo_rmse_of_mean, write_task_csv


@pytest.fixture(scope="module")
def tasks() -> dict[str, Task]:
    return {t.name: t for t in digit_tasks()}


def test_tasks_are_the_real_digits_with_a_fixed_split(tasks):
    assert len(tasks) == 11
    assert len(tasks["digits-all"].names) == 1797 and tasks["parity"].classes == ["even number", "odd number"]
    assert tasks["pair-3-8"].classes == ["eight", "three"] and len(tasks["digits-0to4"].classes) == 5
    assert tasks["digits-all"].train.mean() == pytest.approx(0.75, abs=0.01)
    # the same images are in training in every task built from them (one split for all)
    assert np.array_equal(tasks["inverted"].train, tasks["digits-all"].train)
    assert np.array_equal(tasks["inverted"].images, 16 - tasks["digits-all"].images)


def test_task_csv_shards_with_the_labels_the_fine_tuning_uses(tmp_path, tasks):
    """The csv: source orders classes by name; the fine-tuning's labels must use that same order.
    Kills: Task.labels indexing classes in order of appearance (scores and gains of different classes)."""
    task = tasks["pair-3-8"]  # the first class seen is not the first by name
    small = Task(task.name, task.images[:40], task.names[:40], task.train[:40])
    table = write_task_csv(small, tmp_path / "images")
    shard.run(load_config(shard.Config, None, [f"source=csv:{table}", "progress=false"]), tmp_path / "shards")
    manifest = Manifest.load(tmp_path / "shards")
    assert manifest.classes == small.classes
    assert manifest.split("train").total == manifest.split("train").labelled == int(small.train.sum())
    assert [small.classes[i] for i in small.labels] == small.names


def test_finetuning_measures_gain_and_forgetting(tasks):
    """steps=0 measures the same model twice: gain and forgetting exactly 0; steps > 0 moves them.
    Kills: forgetting measured with the task's head instead of the reference head (accuracies would
    not be those of a 10-class reference), or fine-tuning that never steps."""
    task = tasks["pair-3-8"]
    small = Task(task.name, task.images[:80], task.names[:80], task.train[:80])
    reference = (tasks["digits-all"].images[:50], np.arange(50) % 10)
    still = finetune_task(small, "zmdist-micro-vit", "random", reference, steps=0, lr=1e-3, batch_size=16, seed=0)
    assert still["gain"] == 0 and still["forgetting"] == 0
    moved = finetune_task(small, "zmdist-micro-vit", "random", reference, steps=5, lr=3e-3, batch_size=16, seed=0)
    assert moved["zero_shot_acc"] == still["zero_shot_acc"]
    assert (moved["gain"], moved["forgetting"]) != (0, 0)
    assert moved["reference_before"] * 50 == pytest.approx(round(moved["reference_before"] * 50))


def test_loo_rmse_of_the_mean_predictor_hand_computed():
    """y = 1, 2, 3: each predicted by the mean of the others (2.5, 2, 1.5): errors -1.5, 0, 1.5."""
    assert loo_rmse_of_mean([1.0, 2.0, 3.0]) == pytest.approx(np.sqrt(1.5))
