"""Pipeline stages: thin modules that wire data, teacher, methods and launch together.

Each stage module defines ``NAME``, ``HELP``, a ``Config`` dataclass and ``run(cfg, out) -> dict``
(the results that go into ``OUT/summary.json``). ``zmdist.cli`` builds one subcommand per stage.
"""
