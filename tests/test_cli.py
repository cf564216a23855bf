"""The stage command line: the stage registry, `--help` rendering, flags with dashes or underscores, and
option precedence. Most checks run `zmdist` in a subprocess with a small stage registered in one line, so
they need neither torch-heavy stages nor a change to the real registry of this test process."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import textwrap
import typing
from pathlib import Path
from typing import Literal

import pytest

from zmdist.stages import (
    UnknownStageError,
    load_stage,
    metavar,
    parse_stage_args,
    stage_names,
    stage_summary,
)

ROOT = Path(__file__).resolve().parents[1]

FAKE_STAGE = '''
"""``zmdist fake-stage``: a stage for the command-line tests."""
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from zmdist.config import option, to_dict

NAME = "fake-stage"
HELP = "a stage for the command-line tests"


@dataclass
class Schedule:
    warmup_steps: int = option(5, "warm-up steps")
    kind: Literal["linear", "cosine"] = option("cosine", "schedule shape")


@dataclass
class Config:
    action: Literal["go", "report"] = option("go", "sub-command (the first bare word)")
    method: Literal["supervised", "fixmatch"] = option("supervised", "training method")
    batch_size: int = option(4, "labelled batch (100% of it labelled)")
    maybe: Optional[Literal["a", "b"]] = option(None, "an optional choice")
    sched: Schedule = option(factory=Schedule, help="schedule")


def run(cfg, out):
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "cfg.json").write_text(json.dumps(to_dict(cfg)))
    return {"ok": True}
'''

# Registering a stage is this one line; the rest runs the real command-line entry point.
DRIVER = textwrap.dedent("""
    import sys
    from zmdist.stages import register_stage
    register_stage("fake-stage", "fake_stage_mod")
    from zmdist.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture
def fake_zmdist(tmp_path):
    """``fake_zmdist(*args)``: run ``zmdist`` with the ``fake-stage`` stage registered."""
    (tmp_path / "fake_stage_mod.py").write_text(FAKE_STAGE)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), str(ROOT), env.get("PYTHONPATH", "")])

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, env=env,
                              cwd=tmp_path, timeout=120)

    return run


def _cfg(fake_zmdist, tmp_path: Path, *args: str) -> dict:
    out = tmp_path / f"out{len(list(tmp_path.glob('out*')))}"
    proc = fake_zmdist("fake-stage", "--out", str(out), *args)
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "cfg.json").read_text())


# --- --help -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("tp, shown", [
    (Literal["supervised", "fixmatch"], "{supervised,fixmatch}"),
    (typing.Optional[Literal["a", "b"]], "{a,b}|NULL"),
    (Literal[True, None, 3], "{true,null,3}"),
    (int, "INT"),
    (list[str], "LIST[STR]"),
    (typing.Optional[float], "FLOAT|NULL"),
])
def test_metavar_shows_choices_as_typed(tp, shown):
    """Catches choices rendered from their repr and upper-cased ('SUPERVISED'|...), which no one can type."""
    assert metavar(tp) == shown


def test_stage_help_lists_literal_choices_as_typed(fake_zmdist):
    """Catches `zmdist STAGE --help` showing 'SUPERVISED'|'FIXMATCH' instead of {supervised,fixmatch}, a
    help string with % crashing argparse, and the underscore spelling missing from the help."""
    proc = fake_zmdist("fake-stage", "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "--method {supervised,fixmatch}" in text
    assert "--sched.kind {linear,cosine}" in text and "--maybe {a,b}|NULL" in text
    assert "'SUPERVISED'" not in text and "SUPERVISED" not in text
    assert "--batch_size INT" in text and "100% of it labelled" in text
    assert "--batch-size" not in text  # the dashed alias works but is not listed twice
    top = fake_zmdist("--help")
    assert top.returncode == 0 and "fake-stage" in top.stdout and "a stage for the command-line tests" in top.stdout


def test_real_stage_help_shows_literal_choices():
    """Catches the real stages' --help regressing to repr'd, upper-cased choices (shard's image_format)."""
    proc = subprocess.run([sys.executable, "-m", "zmdist", "shard", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--image_format {png,jpg}" in proc.stdout and "'PNG'" not in proc.stdout


def test_train_help_shows_method_choices():
    """Catches `zmdist train --help` rendering the method choice as 'SUPERVISED'|... instead of {...,supervised,...}."""
    proc = subprocess.run([sys.executable, "-m", "zmdist", "train", "--help"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"\{[a-z_,]*\bsupervised\b[a-z_,]*\}", proc.stdout), proc.stdout
    assert "'SUPERVISED'" not in proc.stdout


def test_top_level_help_imports_no_stage():
    """Catches `zmdist --help` importing every stage (and torch with them): it must stay fast."""
    code = ("import sys; from zmdist import cli; text = cli.build_parser().format_help(); "
            "assert 'embed' in text and 'pseudolabel' in text, text; "
            "heavy = sorted(m for m in sys.modules if m == 'torch' or m.startswith('zmdist.stages.')); "
            "assert not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr


# --- flags: dashes or underscores, and precedence -------------------------------------------------------

def test_flags_take_dashes_or_underscores(fake_zmdist, tmp_path):
    """Catches `--batch-size 16` (or `--sched.warmup-steps`) being rejected or landing anywhere but the
    option `batch_size=16` sets."""
    dashed = _cfg(fake_zmdist, tmp_path, "--batch-size", "16", "--sched.warmup-steps", "7", "--method", "fixmatch")
    under = _cfg(fake_zmdist, tmp_path, "--batch_size", "16", "--sched.warmup_steps", "7", "--method", "fixmatch")
    kv = _cfg(fake_zmdist, tmp_path, "batch_size=16", "sched.warmup_steps=7", "method=fixmatch")
    assert dashed == under == kv
    assert dashed["batch_size"] == 16 and dashed["sched"]["warmup_steps"] == 7 and dashed["method"] == "fixmatch"
    assert _cfg(fake_zmdist, tmp_path, "--batch-size=9")["batch_size"] == 9


def test_precedence_defaults_config_flags_key_value(fake_zmdist, tmp_path):
    """Catches a reordering of defaults < --config < flags < key=value (e.g. flags overriding key=value)."""
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("batch_size: 8\nmethod: fixmatch\nsched: {warmup_steps: 2}\n")
    assert _cfg(fake_zmdist, tmp_path)["batch_size"] == 4
    from_file = _cfg(fake_zmdist, tmp_path, "--config", str(cfg_file))
    assert from_file["batch_size"] == 8 and from_file["method"] == "fixmatch" and from_file["sched"]["warmup_steps"] == 2
    assert _cfg(fake_zmdist, tmp_path, "--config", str(cfg_file), "--batch-size", "16")["batch_size"] == 16
    both = _cfg(fake_zmdist, tmp_path, "--config", str(cfg_file), "--batch-size", "16", "batch_size=32")
    assert both["batch_size"] == 32 and both["sched"]["warmup_steps"] == 2


def test_a_leading_bare_word_is_the_action_and_options_may_come_in_any_order(fake_zmdist, tmp_path):
    """Catches `zmdist STAGE ACTION ...` failing (argparse's "unrecognized arguments" when key=value follow
    flags after a positional), the word landing anywhere but `action`, or an unknown action being accepted."""
    cfg = _cfg(fake_zmdist, tmp_path, "report", "batch_size=3", "--method", "fixmatch", "sched.kind=linear")
    assert cfg["action"] == "report" and cfg["batch_size"] == 3 and cfg["method"] == "fixmatch"
    assert cfg["sched"]["kind"] == "linear"
    assert _cfg(fake_zmdist, tmp_path)["action"] == "go"
    proc = fake_zmdist("fake-stage", "reprt", "--out", str(tmp_path / "o"))
    assert proc.returncode == 2 and "action" in proc.stderr and "report" in proc.stderr


def test_bad_choice_is_a_config_error_naming_the_key(fake_zmdist, tmp_path):
    """Catches a wrong Literal value being accepted, or reported with a traceback instead of exit status 2."""
    proc = fake_zmdist("fake-stage", "--out", str(tmp_path / "o"), "--method", "fixmatc")
    assert proc.returncode == 2 and "method" in proc.stderr and "fixmatch" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_parse_stage_args_on_a_real_stage(tmp_path):
    """Catches the launcher and the CLI parsing a real stage differently: dashed dotted flags, -v after the
    stage, and key=value winning over the flag."""
    module, cfg, out, verbose = parse_stage_args(
        "embed", ["-v", "--shards", "S", "--out", str(tmp_path), "--teacher.model-config", "x.json",
                  "--batch-size", "5", "batch_size=6"])
    assert module.NAME == "embed" and out == tmp_path and verbose is True
    assert cfg.teacher.model_config == "x.json" and cfg.batch_size == 6 and cfg.shards == "S"


def test_out_pointing_at_a_file_is_refused(tmp_path):
    """Catches: `--out FILE` accepted, the stage then failing deep inside (or writing beside the file)."""
    from zmdist.config import ConfigError

    target = tmp_path / "a-file"
    target.write_text("not a folder")
    with pytest.raises(ConfigError, match="--out .*a-file is a file, not a folder"):
        parse_stage_args("embed", ["--shards", "S", "--out", str(target)])


# --- the stage registry ---------------------------------------------------------------------------------

def test_registry_knows_the_stages_in_pipeline_order():
    """Catches a built-in stage falling out of the registry, or `zmdist --help` listing them out of order."""
    assert stage_names() == ["shard", "embed", "pseudolabel", "train", "export", "predict", "prompt-tune", "select",
                             "al-sim", "transfer", "bench", "quickstart"]
    assert stage_summary("embed") == load_stage("embed").HELP


def test_unknown_stage_names_the_known_ones(fake_zmdist):
    """Catches an unknown stage name failing with a bare KeyError, without a suggestion and the list of stages."""
    with pytest.raises(UnknownStageError) as err:
        load_stage("embd")
    message = str(err.value)
    assert "Did you mean: embed" in message and all(name in message for name in stage_names())
    assert isinstance(err.value, KeyError)
    proc = subprocess.run([sys.executable, "-m", "zmdist", "embd", "--out", "x"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 2 and "unknown stage 'embd'" in proc.stderr
    assert all(name in proc.stderr for name in stage_names()) and "Traceback" not in proc.stderr
    sub = subprocess.run([sys.executable, "-m", "zmdist", "submit", "--cluster", "local", "embd"],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert sub.returncode == 2 and "Did you mean: embed" in sub.stderr and "quickstart" in sub.stderr
    # a stage registered in one line is known to the same error message and runs
    listed = fake_zmdist("fake-stag", "--out", "x")
    assert listed.returncode == 2 and "fake-stage" in listed.stderr


def test_launcher_never_imports_the_cli():
    """Catches the zmdist.cli <-> zmdist.cluster import cycle coming back (the launcher must use the
    stage registry, not the CLI)."""
    code = ("import sys, zmdist.cluster.submit, zmdist.cluster.task, zmdist.cluster.report, "
            "zmdist.cluster.slurm, zmdist.cluster.rendezvous, zmdist.cluster.jobs; "
            "assert 'zmdist.cli' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for path in (ROOT / "zmdist" / "cluster").glob("*.py"):  # function-level imports too
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            assert "zmdist.cli" not in names, (path, node.lineno)
