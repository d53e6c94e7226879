"""Reproduce both papers into one report: the door to ``icl_lightning.reproduce.cli`` (the
``icl-reproduce`` console script); ``--help`` lists the options."""

from icl_lightning.reproduce.cli import main

if __name__ == "__main__":
    main(prog="python scripts/reproduce.py")
