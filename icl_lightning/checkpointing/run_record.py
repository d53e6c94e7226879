"""What a run records about itself: its options in every checkpoint, its config once per leg.

- :class:`RunRecord` stores the run's model and data options and its directory in every
  checkpoint (under :data:`RUN_RECORD_KEY`), so that a resume can be checked against them
  (:func:`changed_options`) and can find the run's TensorBoard directory wherever the
  checkpoint was written (``--checkpoint.dirpath``).
- :class:`RunConfig` saves the resolved config: ``config.yaml`` for a new run; a resume (a
  new *leg* of the run) keeps it and writes ``config-leg<k>.yaml`` beside it (k = 2, 3, ...),
  and only once it trains: a resume that trains nothing writes no file.
"""

import json
import os
import re
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import SaveConfigCallback
from typing_extensions import override

#: the checkpoint key of :class:`RunRecord`'s record
RUN_RECORD_KEY = "icl_run"
#: the option sections a resume must keep (unless allowed to change them)
RECORDED_SECTIONS = ("model", "data")


def plain(options: object) -> object:
    """``options`` as JSON values (a checkpoint loads them with ``weights_only=True``)."""
    return json.loads(json.dumps(options, default=str))


def _leaves(options: object, prefix: str = "") -> dict[str, object]:
    """``dotted.key -> value`` for every leaf of nested dicts."""
    if not isinstance(options, dict) or not options:
        return {prefix: options}
    leaves: dict[str, object] = {}
    for key, value in options.items():
        leaves |= _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    return leaves


def changed_options(recorded: dict, given: dict) -> list[str]:
    """``--<option>: <recorded> -> <given>`` for every option of :data:`RECORDED_SECTIONS`
    whose value differs (``<absent>`` where one side has no such option)."""
    before = _leaves({key: recorded.get(key) for key in RECORDED_SECTIONS})
    after = _leaves(plain({key: given.get(key) for key in RECORDED_SECTIONS}))
    absent = "<absent>"
    return [
        f"--{key}: {before.get(key, absent)!r} -> {after.get(key, absent)!r}"
        for key in sorted(before.keys() | after.keys())
        if before.get(key, absent) != after.get(key, absent)
    ]


def recorded_run(checkpoint: dict | None) -> Path | None:
    """The run directory recorded in ``checkpoint`` (None when it records none)."""
    log_dir = ((checkpoint or {}).get(RUN_RECORD_KEY) or {}).get("log_dir")
    return Path(log_dir) if log_dir else None


class RunRecord(Callback):
    """Stores ``options`` (the CLI's parsed ``model`` and ``data`` sections) and the run's
    directory (``trainer.log_dir``, absolute) in every checkpoint under :data:`RUN_RECORD_KEY`.

    The CLI adds it to every run. Example::

        trainer = L.Trainer(callbacks=[RunRecord({"model": {...}, "data": {...}})])
    """

    def __init__(self, options: dict) -> None:
        self.options = plain({key: options.get(key) for key in RECORDED_SECTIONS})
        self._log_dir: str | None = None

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        log_dir = trainer.log_dir  # on every process: it broadcasts rank zero's
        self._log_dir = os.path.abspath(log_dir) if log_dir else None

    @override
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[RUN_RECORD_KEY] = {**self.options, "log_dir": self._log_dir}


def leg_config_name(run: Path, first: str = "config.yaml") -> str:
    """``first`` while ``run`` holds none, else ``config-leg<k>.yaml`` with ``k`` one more
    than the last leg there (2 after ``first`` alone)."""
    if not (run / first).is_file():
        return first
    legs = [re.fullmatch(r"config-leg(\d+)\.yaml", p.name) for p in run.glob("config-leg*.yaml")]
    return f"config-leg{max((int(m[1]) for m in legs if m), default=1) + 1}.yaml"


class RunConfig(SaveConfigCallback):
    """SaveConfigCallback that never overwrites an earlier leg's config.

    A new run writes ``config.yaml`` at setup, as Lightning's does. A resumed fit writes its
    config when training starts (not at all when the checkpoint already reached
    ``max_steps``), as ``config.yaml`` if the run has none, else as the next
    ``config-leg<k>.yaml`` (:func:`leg_config_name`).

    Args:
        as_given: options to record as the user gave them, ``dotted.key -> value`` (the CLI
            chooses a new run's version, but its config records ``version: null`` so that it
            reruns as a new run).
        other arguments: as SaveConfigCallback's.
    """

    def __init__(self, parser, config, *args, as_given: dict | None = None, **kwargs) -> None:
        if as_given:
            config = config.clone()
            for key, value in as_given.items():
                config[key] = value
        super().__init__(parser, config, *args, **kwargs)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self.config.get("ckpt_path"):
            return  # a resume: written when (and if) it trains
        super().setup(trainer, pl_module, stage)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.already_saved:
            return
        log_dir = trainer.log_dir  # on every process: it broadcasts rank zero's
        if trainer.is_global_zero and log_dir:
            self.config_filename = leg_config_name(Path(log_dir), self.config_filename)
        super().setup(trainer, pl_module, "fit")
