"""Pipeline stages, and the one registry that knows them.

Each stage module defines ``NAME``, ``HELP`` (one line), a ``Config`` dataclass, ``run(cfg, out) -> dict``
(the results that go into ``OUT/summary.json``) and optionally ``DEFAULT_OUT`` (then ``--out`` may be left
out). Stages are registered here by module path and imported only when used, so ``zmdist --help`` does
not import torch. Adding a stage is one line at the bottom of this file: ``register_stage(NAME, MODULE)``.

The command line of a stage (``zmdist STAGE [-v] [--config FILE.yaml] [--out DIR] [--option VALUE ...]
[key=value ...]``) is built here too, so ``zmdist.cli`` and the cluster launcher (``zmdist.cluster``) parse
a stage's arguments the same way without importing each other. Precedence: dataclass defaults <
``--config`` < ``--option VALUE`` flags < ``key=value`` overrides. Flags accept dashes or underscores
(``--batch-size 16`` == ``--batch_size 16`` == ``batch_size=16``, dotted keys alike).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import logging
import os
import sys
import types
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, Union, get_args, get_origin

from zmdist.config import ConfigError, describe_default, iter_aliases, iter_options, load_config, type_name
from zmdist.registry import Registry

# stage name -> dotted module path (a string: the module is imported on first use)
STAGE_MODULES: Registry[str] = Registry("stage")
_ORDER: list[str] = []  # registration order = the order of `zmdist --help` (the pipeline's order)
_FLAG_PREFIX = "opt:"  # argparse dest of an option flag: "opt:<dotted key>"


class UnknownStageError(KeyError):
    """A stage name that is not registered; the message lists the close matches and every known stage."""

    def __str__(self) -> str:  # KeyError's str() is the repr of its argument: show the sentence instead
        return str(self.args[0]) if self.args else ""


def register_stage(name: str, module: str | None = None) -> None:
    """Make stage ``name`` available, implemented by ``module`` (default ``zmdist.stages.<name>``)."""
    STAGE_MODULES.register(name)(module or f"{__name__}.{name.replace('-', '_')}")
    _ORDER.append(name)


def stage_names() -> list[str]:
    """Every registered stage, in registration (pipeline) order."""
    return list(_ORDER)


def _module_path(name: str) -> str:
    try:
        return STAGE_MODULES.get(name)
    except KeyError as err:
        raise UnknownStageError(err.args[0]) from None


def load_stage(name: str) -> ModuleType:
    """Import stage ``name``; an unknown name raises ``UnknownStageError`` naming the known stages."""
    module = importlib.import_module(_module_path(name))
    missing = [attr for attr in ("NAME", "HELP", "Config", "run") if not hasattr(module, attr)]
    if missing:
        raise TypeError(f"stage module {module.__name__} lacks {', '.join(missing)}")
    if module.NAME != name:
        raise TypeError(f"stage module {module.__name__} is registered as {name!r} but says NAME = {module.NAME!r}")
    return module


def stage_summary(name: str) -> str:
    """The stage's one-line ``HELP``, read from its source without importing it (keeps ``--help`` fast);
    imports the module only when ``HELP`` is not a plain string literal."""
    spec = importlib.util.find_spec(_module_path(name))
    if spec is not None and spec.origin and spec.origin.endswith(".py"):
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        for node in tree.body:
            if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "HELP" for t in node.targets)
                    and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)):
                return node.value.value
    return load_stage(name).HELP


# --------------------------------------------------------------------------------------------------
# Command line of one stage


def metavar(tp: Any) -> str:
    """How an option's type reads in ``--help``: ``{supervised,fixmatch}`` for a Literal (values as typed),
    ``INT``, ``FLOAT|NULL``, ``LIST[STR]`` otherwise."""
    origin = get_origin(tp)
    if origin is Literal:
        return "{" + ",".join(_as_typed(value) for value in get_args(tp)) + "}"
    if origin in (Union, types.UnionType):
        return "|".join(metavar(arm) for arm in get_args(tp))
    if origin is list:
        (item,) = get_args(tp)
        return f"LIST[{metavar(item)}]"
    if origin is dict:
        return "{KEY:VALUE,...}"
    return type_name(tp).upper().replace(" ", "")


def _as_typed(value: Any) -> str:
    """A Literal value the way it is written on the command line (YAML: true, false, null)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _flag_spellings(key: str) -> tuple[str, str]:
    """(``--a.b_c``, ``--a.b-c``): the flag as the key is written, and with dashes in every dotted part."""
    return f"--{key}", "--" + ".".join(part.replace("_", "-") for part in key.split("."))


def build_stage_parser(target: Any, name: str) -> argparse.ArgumentParser:
    """The argument parser of stage ``name``.

    ``target`` is an ``argparse`` subparsers object (from ``add_subparsers``: the stage becomes a subcommand),
    an ``ArgumentParser`` (the stage's arguments are added to it), or None (a new parser, prog ``zmdist NAME``).
    """
    module = load_stage(name)
    description = (module.__doc__ or module.HELP).strip()
    if target is None:
        parser = argparse.ArgumentParser(prog=f"zmdist {name}", description=description, allow_abbrev=False,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
    elif hasattr(target, "add_parser"):
        parser = target.add_parser(name, help=module.HELP, description=description, allow_abbrev=False,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    else:
        parser = target
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (see configs/)")
    default_out = getattr(module, "DEFAULT_OUT", None)
    parser.add_argument("--out", required=default_out is None, default=default_out, type=Path,
                        help="output folder for results, summary.json and config.yaml"
                        + (f" (default {default_out})" if default_out else ""))
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. teacher.model=RN50")
    options = parser.add_argument_group(
        "options (also settable as key=value or in --config; flags take dashes or underscores: "
        "--a_b == --a-b)")
    for key, tp, field in iter_options(module.Config):
        text = f"{field.metadata.get('help', '')} [default: {describe_default(field)}]".replace("%", "%%")
        written, dashed = _flag_spellings(key)
        options.add_argument(written, dest=_FLAG_PREFIX + key, metavar=metavar(tp), help=text)
        if dashed != written:  # the same option spelt with dashes; not listed twice in --help
            options.add_argument(dashed, dest=_FLAG_PREFIX + key, help=argparse.SUPPRESS)
    for old, new in iter_aliases(module.Config):  # older spellings (zmdist.config ALIASES), still accepted
        written, dashed = _flag_spellings(old)
        options.add_argument(written, dest=_FLAG_PREFIX + old, metavar="VALUE",
                             help=f"older spelling of {new} (also as {old}=... and in --config files)")
        if dashed != written:
            options.add_argument(dashed, dest=_FLAG_PREFIX + old, help=argparse.SUPPRESS)
    return parser


def flag_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--option VALUE`` flags of parsed stage arguments as ``key=value`` overrides."""
    return [f"{dest[len(_FLAG_PREFIX):]}={value}" for dest, value in vars(args).items()
            if dest.startswith(_FLAG_PREFIX) and value is not None]


def action_overrides(module: ModuleType, overrides: list[str]) -> list[str]:
    """``overrides`` with a leading bare word read as ``action=WORD`` when the stage has an ``action`` option.

    Stages with sub-commands (``zmdist transfer score ...``) declare ``action: Literal[...]`` in their
    ``Config``; the word is then checked like any other value (an unknown action names the valid ones).
    A stage may also declare ``POSITIONAL = "option"``: one more bare word fills that option, and a single
    bare word that is not an action is that option (``zmdist bench SWEEP.yaml`` == ``zmdist bench run SWEEP.yaml``)."""
    overrides = list(overrides)
    options = {key: tp for key, tp, _ in iter_options(module.Config)}
    positional = getattr(module, "POSITIONAL", None)
    words: list[str] = []
    while overrides and "=" not in overrides[0] and len(words) < 1 + bool(positional):
        words.append(overrides.pop(0))
    named: list[str] = []
    if words and "action" in options and (not positional or words[0] in get_args(options["action"])
                                           or len(words) == 2):
        named.append(f"action={words.pop(0)}")
    if words and positional:
        named.append(f"{positional}={words.pop(0)}")
    return [*named, *words, *overrides]


def parse_stage_args(name: str, argv: list[str]) -> tuple[ModuleType, Any, Path, bool]:
    """(stage module, resolved config, out folder, verbose) as ``zmdist NAME argv...`` builds them.

    Raises ``UnknownStageError`` for an unknown stage and ``zmdist.config.ConfigError`` for a bad option;
    argparse exits (status 2) on malformed arguments and prints ``--help``."""
    module = load_stage(name)
    args = build_stage_parser(None, name).parse_intermixed_args(list(argv))
    cfg = load_config(module.Config, args.config, flag_overrides(args) + action_overrides(module, args.overrides))
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder: give a folder (it is created if missing)")
    return module, cfg, out, bool(args.verbose)


def setup_logging(verbose: bool = False) -> None:
    """Log ``zmdist`` messages (INFO, or DEBUG when ``verbose``) to stderr, each tagged with this process's rank."""
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,  # some imports configure the root logger before us
    )
    logging.getLogger("zmdist").setLevel(logging.DEBUG if verbose else logging.INFO)


# --------------------------------------------------------------------------------------------------
# The stages, in pipeline order. One line per stage.

register_stage("shard")
register_stage("embed")
register_stage("pseudolabel")
register_stage("train")
register_stage("export")
register_stage("predict")
register_stage("prompt-tune")
register_stage("select")
register_stage("al-sim")
register_stage("transfer")
register_stage("bench")
register_stage("quickstart")

__all__ = [
    "STAGE_MODULES", "UnknownStageError", "action_overrides", "build_stage_parser", "flag_overrides", "load_stage", "metavar",
    "parse_stage_args", "register_stage", "setup_logging", "stage_names", "stage_summary",
]
