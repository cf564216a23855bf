"""``zmdist <stage>``: one subcommand per pipeline stage.

Every stage takes ``--config FILE.yaml``, ``key=value`` overrides (dotted for nested options), a
``--<option>`` flag per option (listed in ``zmdist <stage> --help``) and ``--out DIR``, and writes
``DIR/summary.json`` and ``DIR/config.yaml``. Precedence: defaults < --config < flags < key=value.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from types import ModuleType

from zmdist.config import ConfigError, type_name, describe_default, iter_options, load_config
from zmdist.train.contract import Interrupted

STAGES = ("shard", "embed", "pseudolabel", "train", "quickstart")
# Exit status of a run stopped by SIGTERM/SIGUSR1/SIGUSR2 after checkpointing (EX_TEMPFAIL: "try again").
EXIT_INTERRUPTED = 75


def _stage_module(name: str) -> ModuleType:
    return importlib.import_module(f"zmdist.stages.{name}")


def _add_stage_parser(subparsers: argparse._SubParsersAction, module: ModuleType) -> None:
    parser = subparsers.add_parser(
        module.NAME, help=module.HELP, description=(module.__doc__ or module.HELP).strip(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", metavar="FILE.yaml", help="YAML file of options (see configs/)")
    default_out = getattr(module, "DEFAULT_OUT", None)
    parser.add_argument("--out", required=default_out is None, default=default_out, type=Path,
                        help="output folder for results, summary.json and config.yaml"
                        + (f" (default {default_out})" if default_out else ""))
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. teacher.model=RN50")
    options = parser.add_argument_group("options (also settable as key=value or in --config)")
    for key, tp, field in iter_options(module.Config):
        options.add_argument(
            f"--{key}", dest=f"opt:{key}", metavar=type_name(tp).upper().replace(" ", ""),
            help=f"{field.metadata.get('help', '')} [default: {describe_default(field)}]",
        )


def build_parser() -> argparse.ArgumentParser:
    from zmdist import __version__

    parser = argparse.ArgumentParser(
        prog="zmdist", description="Distil open_clip teachers into small students: shard -> embed -> pseudolabel -> train.",
        epilog="zmdist submit [options] STAGE [args...]: run a stage on SLURM or locally via submitit "
        "(zmdist submit --help).",
    )
    parser.add_argument("--version", action="version", version=f"zmdist {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name in STAGES:
        _add_stage_parser(sub, _stage_module(name))
    return parser


def _setup_logging(verbose: bool) -> None:
    rank = os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0"))
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s [rank {rank}] %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,  # some imports configure the root logger before us
    )
    logging.getLogger("zmdist").setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["submit"]:
        from zmdist.launch.submit import main as submit_main

        return submit_main(argv[1:])
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    module = _stage_module(args.stage)
    flags = [f"{k[4:]}={v}" for k, v in vars(args).items() if k.startswith("opt:") and v is not None]
    try:
        cfg = load_config(module.Config, args.config, flags + list(args.overrides))
    except ConfigError as err:
        print(f"zmdist {args.stage}: config error: {err}", file=sys.stderr)
        return 2
    try:
        module.run(cfg, args.out)
    except Interrupted as err:
        print(f"zmdist {args.stage}: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (FileNotFoundError, KeyError, ValueError) as err:
        if args.verbose:
            raise
        print(f"zmdist {args.stage}: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
