"""``zmdist <stage>``: one subcommand per pipeline stage (the stages are registered in ``zmdist.stages``).

Every stage takes ``--config FILE.yaml``, ``key=value`` overrides (dotted for nested options), a
``--<option>`` flag per option (listed in ``zmdist <stage> --help``; dashes or underscores) and ``--out DIR``,
and writes ``DIR/summary.json`` and ``DIR/config.yaml``. Precedence: defaults < --config < flags < key=value.
``zmdist submit ...`` runs a stage through submitit (``zmdist.cluster.submit``).

Exit status: 0 done, 1 an error (one line naming what to fix), 2 a config error, 73 ``--out`` not writable,
74 disk full (``zmdist.io_errors``), 75 interrupted after checkpointing; the rerun of 73-75 resumes.
"""

from __future__ import annotations

import argparse
import sys

from zmdist.config import ConfigError
from zmdist.io_errors import describe
from zmdist.stages import (
    UnknownStageError,
    parse_stage_args,
    setup_logging,
    stage_names,
    stage_summary,
)

# Exit status of a run stopped by SIGTERM/SIGUSR1/SIGUSR2 after checkpointing (EX_TEMPFAIL: "try again").
EXIT_INTERRUPTED = 75
_VERBOSE = ("-v", "--verbose")


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser: ``--help`` lists the stages without importing them (each stage's options are
    in ``zmdist STAGE --help``)."""
    from zmdist import __version__

    parser = argparse.ArgumentParser(
        prog="zmdist", description="Distil open_clip teachers into small students: shard -> embed -> pseudolabel -> train.",
        epilog="zmdist submit [options] STAGE [args...]: run a stage on SLURM or locally via submitit "
        "(zmdist submit --help).",
    )
    parser.add_argument("--version", action="version", version=f"zmdist {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    for name in stage_names():
        sub.add_parser(name, help=stage_summary(name), add_help=False)
    return parser


def _run(name: str, argv: list[str], verbose: bool) -> int:
    try:
        module, cfg, out, stage_verbose = parse_stage_args(name, argv)
    except ConfigError as err:
        print(f"zmdist {name}: config error: {err}", file=sys.stderr)
        return 2
    verbose = verbose or stage_verbose
    setup_logging(verbose)
    from zmdist.train.contract import Interrupted  # imports torch: only once a stage really runs

    try:
        module.run(cfg, out)
    except Interrupted as err:
        print(f"zmdist {name}: {err}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as err:  # a failed write comes in many types (zmdist.io_errors)
        failure = None if verbose else describe(err, out)
        if failure is not None:
            print(f"zmdist {name}: error: {failure.message}", file=sys.stderr)
            return failure.exit_status
        if verbose or not isinstance(err, (FileNotFoundError, KeyError, ValueError)):
            raise
        print(f"zmdist {name}: error: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["submit"]:
        from zmdist.cluster.submit import main as submit_main

        return submit_main(argv[1:])
    i = 0
    while i < len(argv) and argv[i] in _VERBOSE:
        i += 1
    if i == len(argv) or argv[i].startswith("-"):  # --help, --version, no stage, or an unknown option
        build_parser().parse_args(argv)
        return 2
    name = argv[i]
    try:
        return _run(name, argv[i + 1:], verbose=i > 0)
    except UnknownStageError as err:
        print(f"zmdist: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
