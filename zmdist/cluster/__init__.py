"""Running zmdist stages on clusters: ``zmdist submit`` (submitit: SLURM or local).

Modules, one per job:
  * ``submit``: the command line (``zmdist submit [options] STAGE [args...]``) and ``main``;
  * ``slurm``: submit options -> submitit executor parameters, and the ``--dry-run`` rendering;
  * ``task``: what runs on the cluster (the pickled, requeueable ``StageTask``);
  * ``rendezvous``: RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT from the SLURM environment;
  * ``report``: waiting for submitted jobs and reporting their results or remote tracebacks;
  * ``jobs``: the record of submitted jobs (``OUT/jobs.json``) and their live state.

Nothing here imports ``zmdist.cli``; both use the stage registry in ``zmdist.stages``.
"""
