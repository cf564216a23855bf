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
