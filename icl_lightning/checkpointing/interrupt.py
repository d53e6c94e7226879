"""InterruptCheckpoint: SIGTERM or Ctrl+C stop training after the current step and save."""

import signal
import threading

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from icl_lightning.checkpointing.run_checkpoint import RunCheckpoint


class InterruptCheckpoint(Callback):
    """Writes ``last.ckpt`` when training is stopped by SIGTERM or Ctrl+C, in the manner of
    Lightning's ``OnExceptionCheckpoint`` (which saves on any exception).

    SIGTERM (e.g. SLURM preemption) and a first Ctrl+C (SIGINT, routed through Lightning's
    SIGTERM handling) stop training after the current step; then the run's
    :class:`RunCheckpoint` writes ``last.ckpt``, and ``fit --ckpt_path
    <run>/checkpoints/last.ckpt`` resumes from there. A second Ctrl+C stops at once. Nothing is
    written on other errors, in validate/test or under ``fast_dev_run``. Lightning restores the
    previous signal handlers when the run ends.

    The CLI adds it to every run. Example::

        trainer = L.Trainer(callbacks=[InterruptCheckpoint(), RunCheckpoint(save_last=True)])
    """

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        sigterm = signal.getsignal(signal.SIGTERM)
        if not callable(sigterm):
            return

        saves = isinstance(trainer.checkpoint_callback, RunCheckpoint)
        then = " and saves" if saves else " (checkpointing is off: nothing is saved)"
        writing = " and writing last.ckpt" if saves else ""

        def stop_after_step(signum, frame) -> None:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl+C: now
            rank_zero_info(f"\nCtrl+C: stopping after this step{writing} ...")
            sigterm(signum, frame)

        signal.signal(signal.SIGINT, stop_after_step)
        rank_zero_info(f"Training; Ctrl+C (or SIGTERM) stops after the current step{then}.")

    @override
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        stopped = isinstance(exception, SIGTERMException | KeyboardInterrupt)
        training = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        checkpoint = trainer.checkpoint_callback
        if (
            stopped
            and training
            and not trainer.fast_dev_run
            and isinstance(checkpoint, RunCheckpoint)
        ):
            path = checkpoint.write_last(trainer)
            rank_zero_info(
                f"Interrupted at step {trainer.global_step}; saved {path}. "
                f"Resume with: --ckpt_path {path}"
            )
