"""The door to :mod:`icl_lightning.benchmark` (the ``icl-benchmark`` command): the speed of
icl-lightning side by side with a bare loop and the official JAX code, the deep models' rows,
and the probes' share of every config.

    python scripts/benchmark.py --help
"""

from icl_lightning.benchmark import main

if __name__ == "__main__":
    main()
