"""Every file in configs/ is a valid config of the stage its name starts with (docs that match the code)."""

from pathlib import Path

import pytest

from zmdist.stages import stage_names
from zmdist.config import load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 4


def stage_of(path: Path) -> str:
    """The stage a config file belongs to: the longest stage name its file name starts with."""
    names = [n for n in stage_names() if path.stem == n or path.stem.startswith(n + "-")]
    assert names, f"{path.name} must start with a stage name ({', '.join(stage_names())})"
    return max(names, key=len)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_file_validates(path):
    from zmdist.stages import load_stage

    cfg = load_config(load_stage(stage_of(path)).Config, path)
    assert cfg is not None


# configs/bench/ holds sweeps of `zmdist bench`: tests/test_bench_plan.py loads and plans every one
