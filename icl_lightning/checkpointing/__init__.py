"""Checkpointing of ``icl-lightning fit``, as small parts with one job each.

- :class:`RunCheckpoint` (``run_checkpoint.py``): the ModelCheckpoint of ``--checkpoint.*``;
  one ``last.ckpt`` per run, also written at the end, kept across resumes however the run's
  folder is spelled.
- :class:`InterruptCheckpoint` (``interrupt.py``): SIGTERM / Ctrl+C stop after the current step
  and write ``last.ckpt``.
- :class:`ExactResume` (``resume.py``): a resumed run continues at the same step, epoch and
  curve point.
- :class:`AtomicCheckpointIO` (``atomic_io.py``): a checkpoint replaces the previous one whole or
  not at all; a failed write names the file.
- ``lightning_private.py``: every private Lightning member the project uses.

The finite-weights guard and the network's class stamp are the module's own
``on_save_checkpoint`` (:class:`~icl_lightning.modules.ICLRegressionModule`).
"""

from icl_lightning.checkpointing.atomic_io import AtomicCheckpointIO, CheckpointWriteError
from icl_lightning.checkpointing.interrupt import InterruptCheckpoint
from icl_lightning.checkpointing.resume import ExactResume
from icl_lightning.checkpointing.run_checkpoint import RunCheckpoint

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointWriteError",
    "ExactResume",
    "InterruptCheckpoint",
    "RunCheckpoint",
]
