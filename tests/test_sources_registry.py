"""Data sources come from a registry: a plug-in is one decorated function, and the core never needs the demo."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import zmdist
from zmdist.data.manifest import Manifest
from zmdist.data.reader import iter_shard
from zmdist.data.sources import SOURCES, Sample, Source, open_source

PACKAGE = Path(zmdist.__file__).parent
COLOURS = {"red": (200, 30, 30), "blue": (30, 30, 200)}


@SOURCES.register("test-squares")
def open_test_squares(spec: str, argument: str) -> Source:
    """``test-squares:N``: N plain squares per colour, defined only in this test file."""
    n = int(argument)
    samples = [
        Sample(f"{name}-{i}", f"{spec}/{name}/{i}", lambda rgb=rgb: Image.new("RGB", (6, 6), rgb), label)
        for label, (name, rgb) in enumerate(COLOURS.items())
        for i in range(n)
    ]
    return Source(spec, list(COLOURS), {"train": samples}, own_splits=False)


def test_a_source_registered_in_another_file_is_shardable_through_the_cli(tmp_path):
    """Catches open_source/the shard stage hard-coding the built-in schemes: a source registered outside
    zmdist (here, in this file) must work through ``zmdist shard --source SCHEME:ARG`` with no other edit."""
    out = tmp_path / "shards"
    argv = ["shard", "--source", "test-squares:3", "--out", str(out), "shard_size=4", "progress=false"]
    code = f"import sys, {Path(__file__).stem}; from zmdist.cli import main; sys.exit(main({argv!r}))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).parent)
    assert r.returncode == 0, r.stderr[-3000:]
    m = Manifest.load(out)
    assert m.classes == ["red", "blue"] and sum(m.counts("train")) == 6
    records = [r for p in m.shard_paths("train") for r in iter_shard(p)]
    assert sorted(r["key"] for r in records) == sorted(f"{c}-{i}" for c in COLOURS for i in range(3))
    assert all(r["image"].getpixel((0, 0)) == COLOURS[r["key"].split("-")[0]] for r in records)
    assert json.loads((out / "summary.json").read_text())["source"] == "test-squares:3"


def test_builtin_sources_are_registered_once():
    """Catches a built-in source that is no longer registered (its module not imported by zmdist.data),
    and a registry that silently lets a second plug-in replace an existing scheme."""
    assert {"imagefolder", "csv", "sklearn-digits"} <= set(SOURCES.names())
    with pytest.raises(ValueError, match="registered twice"):
        SOURCES.register("csv")(open_test_squares)


def test_unknown_scheme_names_the_registered_ones():
    """Catches an unhelpful error for a typo in --source: it must suggest the close scheme and list all."""
    with pytest.raises(ValueError) as err:
        open_source("imagefoldr:/data/pets")
    msg = str(err.value)
    assert "did you mean imagefolder" in msg
    for name in ("imagefolder", "csv", "sklearn-digits", "test-squares"):
        assert name in msg


def test_builders_check_their_argument(tmp_path):
    """Catches a scheme that silently accepts a missing or a superfluous argument (``imagefolder`` with no
    path would otherwise read the current folder; ``sklearn-digits:x`` would ignore the ``x``)."""
    with pytest.raises(ValueError, match=r"imagefolder:PATH"):
        open_source("imagefolder")
    with pytest.raises(ValueError, match=r"csv:FILE"):
        open_source("csv:")
    with pytest.raises(ValueError, match="takes no argument"):
        open_source("sklearn-digits:x")


def _imported_modules(path: Path) -> set[str]:
    """Absolute names of every module imported anywhere in ``path`` (top level or inside functions)."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts[:-1])  # the package a relative import starts from
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def test_core_modules_import_nothing_from_the_demo():
    """Catches the core (zmdist.data and every other non-demo module) depending on the demo package again,
    e.g. the sklearn-digits source importing the synthetic-digit renderer. Only the quickstart stage,
    which wires the demo together, may import it."""
    allowed = {PACKAGE / "stages" / "quickstart.py"}
    core = [p for p in sorted(PACKAGE.rglob("*.py")) if "demo" not in p.relative_to(PACKAGE).parts and p not in allowed]
    assert any(p.parent.name == "data" for p in core) and len(core) > 20
    offenders = {
        str(p.relative_to(PACKAGE.parent)): sorted(n for n in _imported_modules(p) if n.split(".")[:2] == ["zmdist", "demo"])
        for p in core
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_importing_the_data_layer_loads_no_demo_module():
    """Catches a demo import slipping into the data layer at run time (e.g. through a dynamic import the
    AST scan cannot see): opening and sharding sources must not load zmdist.demo."""
    code = (
        "import sys, zmdist.data, zmdist.stages.shard;"
        "zmdist.data.open_source('sklearn-digits');"
        "bad = [m for m in sys.modules if m.startswith('zmdist.demo')];"
        "assert not bad, bad"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
