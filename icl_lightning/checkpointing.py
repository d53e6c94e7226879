"""RunCheckpoint: the CLI's ModelCheckpoint, safe against divergence and interrupts."""

import signal
import threading
from functools import cached_property

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

#: checkpoint key holding the trained network's class, checked before a checkpoint is loaded
NETWORK_CLASS_KEY = "icl_network_class"


def network_class(pl_module: L.LightningModule) -> str:
    """``module.qualname`` of the trained network: ``pl_module.model`` if there is one."""
    network = getattr(pl_module, "model", pl_module)
    return f"{type(network).__module__}.{type(network).__qualname__}"


def weights_are_finite(pl_module: L.LightningModule) -> bool:
    """``all_p isfinite(p)`` over the module's parameters and buffers (one host sync)."""
    tensors = [t for t in (*pl_module.parameters(), *pl_module.buffers()) if t.is_floating_point()]
    return bool(torch.stack([t.isfinite().all() for t in tensors]).all()) if tensors else True


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (same options) that never writes non-finite weights and saves on interrupts.

    - Every write first checks that all weights are finite (one host sync per checkpoint, none
      per training step); if not, it raises ``FloatingPointError`` and writes nothing, so the
      checkpoints already on disk (``last.ckpt`` included) stay the last finite ones.
    - ``last.ckpt`` is also written when training ends (after the probes' last measurement),
      but never under ``fast_dev_run``; its loop position resumes at the very next step.
    - SIGTERM (e.g. SLURM preemption) and a first Ctrl+C (SIGINT) stop training after the
      current step and write ``last.ckpt``; ``fit --ckpt_path <run>/checkpoints/last.ckpt``
      resumes from there. A second Ctrl+C stops at once.
    - The trained network's class is stored in the checkpoint (:data:`NETWORK_CLASS_KEY`), so
      that a checkpoint of another model can be refused before it is loaded.
    """

    _align_logging_step = False

    @cached_property
    def state_key(self) -> str:  # type: ignore[override]
        """ModelCheckpoint's key, built once: it depends only on options fixed at construction,
        and Lightning formats it into a label at every callback hook of every step."""
        return super().state_key

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        """As ModelCheckpoint's, but return at once on the steps that save nothing (no time
        interval set and ``global_step`` not a multiple of ``every_n_train_steps``)."""
        every = self._every_n_train_steps
        if self._train_time_interval is None and (every < 1 or trainer.global_step % every):
            return
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Arm the logging-step alignment (at the first batch) and route the first SIGINT through
        Lightning's SIGTERM handling (stop after the step; Lightning restores the previous
        handler when the run ends)."""
        self._align_logging_step = True
        if threading.current_thread() is not threading.main_thread():
            return
        sigterm = signal.getsignal(signal.SIGTERM)
        if not callable(sigterm):
            return

        def stop_after_step(signum, frame) -> None:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl+C: now
            rank_zero_info("\nCtrl+C: stopping after this step and writing last.ckpt ...")
            sigterm(signum, frame)

        signal.signal(signal.SIGINT, stop_after_step)
        rank_zero_info("Training; Ctrl+C (or SIGTERM) stops after the current step and saves.")

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        """Once per run, at its first step: make Lightning's logging step (the x of every
        curve) equal to ``global_step`` again. A checkpoint written at a run's end restores it
        one ahead, which would shift every curve of a resumed run by one step; with one
        optimizer the two are equal at every step of an uninterrupted run."""
        if self._align_logging_step:
            trainer.fit_loop.epoch_loop._batches_that_stepped = trainer.global_step
            self._align_logging_step = False

    @override
    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        """Write ``last.ckpt`` when training is stopped by SIGTERM or SIGINT; nothing on other
        errors, nor in validate/test."""
        stopped = isinstance(exception, SIGTERMException | KeyboardInterrupt)
        training = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if stopped and training and not trainer.fast_dev_run:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
            rank_zero_info(
                f"Interrupted at step {trainer.global_step}; saved {self.last_model_path}. "
                f"Resume with: --ckpt_path {self.last_model_path}"
            )

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write ``last.ckpt`` at the end (but not under fast_dev_run), after the probes' final
        measurement, so that a resumed run does not measure this step again."""
        if self.save_last and not trainer.fast_dev_run:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """Store the network's class and make the saved loop position resume where it stopped.

        Lightning marks the current epoch finished when training ends, even between two
        epoch ends (``max_steps`` reached mid-epoch), and resumes a finished epoch's checkpoint
        into an empty epoch; either way a resumed run's epoch counter (and epoch-wise LR
        schedulers) would run one ahead of an uninterrupted run. So an epoch stopped midway is
        stored as unfinished, and a finished one as the next epoch's start.
        """
        checkpoint[NETWORK_CLASS_KEY] = network_class(pl_module)
        loop = checkpoint.get("loops", {}).get("fit_loop", {})
        epochs, batches = loop.get("epoch_progress"), loop.get("epoch_loop.batch_progress")
        if not (epochs and batches) or epochs["total"]["processed"] != epochs["total"]["started"]:
            return  # no loop state, or the epoch is (correctly) stored as running
        if batches["is_last_batch"]:
            batches["current"] = dict.fromkeys(batches["current"], 0)
            batches["is_last_batch"] = False
        elif batches["current"]["completed"] > 0:
            for count in (epochs["total"], epochs["current"]):
                count["processed"] = count["completed"] = count["started"] - 1

    @override
    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        """Refuse non-finite weights, then save as ModelCheckpoint does."""
        if not weights_are_finite(trainer.lightning_module):
            kept = self.last_model_path or "none written yet"
            raise FloatingPointError(
                f"The weights are not finite at step {trainer.global_step}: training diverged, "
                f"and {filepath} was not written. Last finite checkpoint: {kept}. Lower the "
                "optimizer's lr or set trainer.gradient_clip_val."
            )
        super()._save_checkpoint(trainer, filepath)
