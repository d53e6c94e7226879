"""The reproduction of both papers: experiments as records (:mod:`.experiments`), one training
run each seed (:mod:`.runs`), launched here in parallel (:mod:`.runner`) or as submitit jobs
(:mod:`.slurm`), and a report of tables, verdicts and figures (:mod:`.report`,
:mod:`.verdicts`, :mod:`.figures`) from the runs' TensorBoard scalars (:mod:`.scalars`). The
command line is :func:`.cli.main` (``icl-reproduce``, ``scripts/reproduce.py``)."""
