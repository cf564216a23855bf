"""Launching zmdist stages on clusters: ``zmdist submit`` (submitit: SLURM or local), rendezvous from the
SLURM environment, and the record of submitted jobs kept in the run folder."""
