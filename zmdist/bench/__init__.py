"""``zmdist bench``: benchmark sweeps that reproduce the papers' tables.

``spec`` (the sweep file) -> ``plan`` (shared steps once, then the cells; ``kinds`` says what a cell of
each stage takes and how its number is read) -> ``runner`` (local: each step its own process and log) or
``submit`` (SLURM: a shared job, then the cells as a job array) -> ``report`` (table, CSV, plots, JSON).
``cost`` and ``dryrun`` estimate GPU-hours before anything runs. The stage is ``zmdist.stages.bench``.
"""
