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
- :class:`RunRecord` and :class:`RunConfig` (``run_record.py``): every checkpoint records the
  run's model and data options and its directory (a resume is checked against them and finds
  its run); a resume keeps ``config.yaml`` and writes ``config-leg<k>.yaml`` if it trains.
- ``write_failure.py``: a full disk or failing writer ends with one message naming the last
  good checkpoint (:class:`RunWriteError`).
- ``lightning_private.py``: every private Lightning member the project uses.

The finite-weights guard and the network's class stamp are the module's own
``on_save_checkpoint`` (:class:`~icl_lightning.modules.ICLRegressionModule`).
"""

from icl_lightning.checkpointing.atomic_io import AtomicCheckpointIO, CheckpointWriteError
from icl_lightning.checkpointing.interrupt import InterruptCheckpoint
from icl_lightning.checkpointing.resume import ExactResume
from icl_lightning.checkpointing.run_checkpoint import RunCheckpoint
from icl_lightning.checkpointing.run_record import RunConfig, RunRecord
from icl_lightning.checkpointing.write_failure import RunWriteError

__all__ = [
    "AtomicCheckpointIO",
    "CheckpointWriteError",
    "ExactResume",
    "InterruptCheckpoint",
    "RunCheckpoint",
    "RunConfig",
    "RunRecord",
    "RunWriteError",
]
