"""Every file in configs/ is a valid config of the stage its name starts with (docs that match the code)."""

from pathlib import Path

import pytest

from zmdist.stages import stage_names
from zmdist.config import load_config

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert len(CONFIGS) >= 4


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_file_validates(path):
    stage = path.stem.split("-")[0]
    assert stage in stage_names(), f"{path.name} must start with a stage name"
    module = __import__(f"zmdist.stages.{stage}", fromlist=["Config"])
    cfg = load_config(module.Config, path)
    assert cfg is not None


# configs/bench/ holds the papers' setups, named after the paper's method; each is a config of one stage
BENCH_STAGE = {"grip": "prompt-tune", "al": "al-sim"}
BENCH_CONFIGS = sorted((Path(__file__).parent.parent / "configs" / "bench").glob("*.yaml"))


@pytest.mark.parametrize("path", BENCH_CONFIGS, ids=lambda p: p.name)
def test_bench_config_validates(path):
    """Catches a published-setup config drifting from its stage's options (a renamed or removed key)."""
    prefix = path.stem.split("-")[0]
    assert prefix in BENCH_STAGE, f"{path.name}: add its stage to BENCH_STAGE"
    from zmdist.stages import load_stage

    module = load_stage(BENCH_STAGE[prefix])
    assert load_config(module.Config, path) is not None
