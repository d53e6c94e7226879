"""RunCheckpoint: the CLI's ModelCheckpoint, one ``last.ckpt`` per run, written at the end too."""

import os
from functools import cached_property

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from typing_extensions import override

from icl_lightning.checkpointing.lightning_private import respell_folder


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint (same options) that keeps one ``last.ckpt`` per run.

    - ``last.ckpt`` is also written when training ends (after the probes' last measurement, so
      that a resumed run does not measure that step again), but never under ``fast_dev_run``;
      :meth:`write_last` writes it at any other moment (the interrupt callback uses it).
    - A fit resumed from a checkpoint in this callback's folder owns that folder's files, however
      the folder is spelled: relative in one command and absolute in the next (the CLI points a
      resumed run's logger at the checkpoint's own run), or moved. Lightning would otherwise
      treat ``last.ckpt`` as another run's, write ``last-v1.ckpt`` beside it, and the next
      ``--ckpt_path <run>/checkpoints/last.ckpt`` would silently rewind. The same holds when a
      resume changes its options (``--checkpoint.every_n_train_steps``).

    Example::

        trainer = L.Trainer(callbacks=[RunCheckpoint(save_last=True, every_n_train_steps=100)])
    """

    _resumed_from: str | None = None

    @cached_property
    def state_key(self) -> str:  # type: ignore[override]
        """ModelCheckpoint's key, built once: it depends only on options fixed at construction,
        and Lightning formats it into a label at every callback hook of every step."""
        return super().state_key

    @override
    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        """Before ``load_state_dict``: note the file resumed from (the trainer knows it only
        from now on), and find this callback's state when its options changed since
        (``--checkpoint.every_n_train_steps`` is part of Lightning's state key)."""
        self._resumed_from = trainer.ckpt_path
        states = checkpoint.get("callbacks") or {}
        prefix = f"{type(self).__name__}{{"
        stored = [v for k, v in states.items() if isinstance(k, str) and k.startswith(prefix)]
        if self.state_key in states or len(stored) != 1:
            return
        (state,) = stored
        if state.get("monitor") != self.monitor:  # another measure: no best model to keep
            state = {key: state.get(key) for key in ("dirpath", "last_model_path")}
            state |= {"best_model_score": None, "best_model_path": ""}
        states[self.state_key] = state

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        """As ModelCheckpoint's, with the stored folder respelled as this run's when it is the
        same folder: the one the resumed checkpoint lies in, or the same after resolving."""
        stored = state_dict.get("dirpath")
        if stored and self.dirpath and stored != self.dirpath and self._same_folder(stored):
            state_dict = respell_folder(state_dict, self.dirpath)
        super().load_state_dict(state_dict)

    def _same_folder(self, stored: str) -> bool:
        ours = os.path.realpath(self.dirpath)
        resumed = self._resumed_from and os.path.dirname(os.path.realpath(self._resumed_from))
        return ours in (os.path.realpath(stored), resumed)

    def write_last(self, trainer: L.Trainer) -> str:
        """Write ``<dirpath>/last.ckpt`` now and return its path. Call it on every process
        (``trainer.save_checkpoint`` writes from global rank zero)."""
        path = self.format_checkpoint_name({}, filename=self.CHECKPOINT_NAME_LAST)
        self.last_model_path = path  # stored in the checkpoint: a resume continues this file
        trainer.save_checkpoint(path, self.save_weights_only)
        return path

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.save_last and not trainer.fast_dev_run:
            self.write_last(trainer)
