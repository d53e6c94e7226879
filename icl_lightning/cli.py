"""The ``icl-lightning`` command: LightningCLI with this project's defaults.

``icl-lightning fit --config configs/demo.yaml`` trains; ``validate`` and ``test`` evaluate a
checkpoint (``--ckpt_path``). Model and data are chosen by ``class_path`` (any subclass of
:class:`ICLRegressionModule` and of ``LightningDataModule``); the data's ``input_dim`` and
``num_context`` are linked into the model. Defaults: a TensorBoardLogger under ``logs/``, a rich
progress bar counting steps, a :class:`~icl_lightning.checkpointing.RunCheckpoint`
(``--checkpoint.*``: ``last.ckpt`` every 100 steps, at the end, and on SIGTERM/Ctrl+C) and the
resolved config saved in the run's directory. The optimizer and LR scheduler come from
``--optimizer`` / ``--lr_scheduler``.

Runs and their directories:

- ``fit --ckpt_path <run>/checkpoints/last.ckpt`` continues that run: the logger writes into
  ``<run>`` again, so its TensorBoard curves stay one run.
- ``--trainer.logger false``: the run's files (``config.yaml``, ``checkpoints/``) go to a new
  ``<trainer.default_root_dir>/version_<k>`` (default root ``logs/unlogged``), never the cwd.
- Before anything is written, the checkpoint is checked (a readable checkpoint of the same
  network, with the same parameter shapes) and every probe checks that it can measure this
  model on this data; a failure is a usage error (exit 2) naming the option or file.
"""

import pickle
import re
import zipfile
from pathlib import Path

import torch
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException

from icl_lightning.callbacks.probe import Probe
from icl_lightning.checkpointing import NETWORK_CLASS_KEY, RunCheckpoint, network_class
from icl_lightning.data.datamodule import ICLDataModule
from icl_lightning.hparams import FinalMetrics
from icl_lightning.modules.base import ICLRegressionModule
from icl_lightning.progress import StepProgressBar

_TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"


def _natural_key(name: str) -> list:
    """Sort key that puts ``loss_n2`` before ``loss_n10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _next_version(root: Path) -> Path:
    """``root/version_<k>`` with ``k`` one more than the largest there (0 if none)."""
    taken = [int(p.name[8:]) for p in root.glob("version_*") if p.name[8:].isdigit()]
    return root / f"version_{max(taken, default=-1) + 1}"


class ICLLightningCLI(LightningCLI):
    """LightningCLI with subclass-mode model and data, linked dimensions and a run summary."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("model_class", ICLRegressionModule)
        kwargs.setdefault("datamodule_class", ICLDataModule)
        kwargs.setdefault("subclass_mode_model", True)
        kwargs.setdefault("subclass_mode_data", True)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser) -> None:
        parser.link_arguments("data.input_dim", "model.init_args.input_dim", apply_on="instantiate")
        parser.link_arguments(
            "data.num_context", "model.init_args.num_context", apply_on="instantiate"
        )
        parser.add_lightning_class_args(StepProgressBar, "progress_bar")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "data": {"class_path": "icl_lightning.data.ICLDataModule"},
                "checkpoint.save_last": True,
                "checkpoint.every_n_train_steps": 100,
                "trainer.default_root_dir": "logs/unlogged",
                "trainer.logger": {
                    "class_path": _TENSORBOARD,
                    "init_args": {"save_dir": "logs", "name": "icl"},
                },
            }
        )

    # ------------------------------------------------------------- before anything is built
    def before_instantiate_classes(self) -> None:
        """Check the checkpoint file; choose the run directory (resumed run, or no logger)."""
        config = self.config[self.subcommand]
        if config.get("ckpt_path"):
            self._check_checkpoint_file(config.ckpt_path)
        trainer = config.trainer
        if str(trainer.precision) == "16-true":
            self.parser.error(
                "--trainer.precision=16-true is not supported: AdamW's float16 state under- and "
                "overflows within a few steps here. Expected 64-true, 32-true, bf16-true, "
                "16-mixed or bf16-mixed."
            )
        if not trainer.logger:
            trainer.default_root_dir = str(_next_version(Path(trainer.default_root_dir)))
            return
        if getattr(trainer.logger, "class_path", None) == _TENSORBOARD:
            # the final metrics replace Lightning's placeholder hp_metric = -1 in the hparams tab
            trainer.logger.init_args.default_hp_metric = False
            if self.subcommand == "fit" and config.get("ckpt_path"):
                self._continue_run(trainer.logger.init_args, Path(config.ckpt_path))

    def _check_checkpoint_file(self, ckpt_path: str) -> None:
        """A usage error unless ``ckpt_path`` is a complete checkpoint file (a torch zip)."""
        path = Path(ckpt_path)
        if ckpt_path in ("last", "best", "hpc", "registry"):
            return  # Lightning's own names, resolved by the trainer
        if not path.is_file():
            self.parser.error(f"--ckpt_path={ckpt_path}: no such file.")
        if not zipfile.is_zipfile(path):
            self.parser.error(
                f"--ckpt_path={ckpt_path} is not a complete checkpoint (expected a .ckpt "
                "written by icl-lightning fit; this one is truncated or of another format)."
            )

    @staticmethod
    def _continue_run(logger_args, ckpt_path: Path) -> None:
        """Point TensorBoardLogger options at the run holding ``<run>/checkpoints/<x>.ckpt``."""
        run = ckpt_path.resolve().parent.parent
        if ckpt_path.resolve().parent.name != "checkpoints" or not any(run.glob("events.*")):
            return
        logger_args.save_dir = str(run.parent.parent)
        logger_args.name = run.parent.name
        logger_args.version = (
            int(run.name[8:]) if re.fullmatch(r"version_\d+", run.name) else run.name
        )

    # ------------------------------------------------------------------- building the run
    def instantiate_classes(self) -> None:
        """Build model, data, trainer and check they fit together; an impossible option becomes
        a usage error (exit 2) naming the option, before any training or logging starts."""
        try:
            super().instantiate_classes()
            config = self.config[self.subcommand]
            if config.get("ckpt_path"):
                self._check_checkpoint_model(config.ckpt_path)
            for callback in self.trainer.callbacks:
                if isinstance(callback, Probe):
                    callback.check(self.model, self.datamodule)
            options = config.as_dict()
            params = {key: options[key] for key in ("model", "data", "optimizer") if key in options}
            self.trainer.callbacks.append(FinalMetrics(params))
        except ValueError as error:
            self.parser.error(str(error))

    def _check_checkpoint_model(self, ckpt_path: str) -> None:
        """ValueError unless the checkpoint holds this network, with the same parameter shapes."""
        if not Path(ckpt_path).is_file():
            return
        try:
            checkpoint = torch.load(ckpt_path, map_location="cpu", weights_only=True, mmap=True)
        except (RuntimeError, pickle.UnpicklingError) as error:
            raise ValueError(
                f"--ckpt_path={ckpt_path} is not a readable checkpoint ({error}): expected a "
                ".ckpt written by icl-lightning fit."
            ) from error
        if "state_dict" not in checkpoint:
            raise ValueError(
                f"--ckpt_path={ckpt_path} has no state_dict: expected a .ckpt written by "
                "icl-lightning fit."
            )
        ours = network_class(self.model)
        theirs = checkpoint.get(NETWORK_CLASS_KEY, ours)
        if theirs != ours:
            raise ValueError(
                f"--ckpt_path={ckpt_path} holds a {theirs}, but the model is a {ours}: "
                "expected a checkpoint of the configured model (or the config it was trained with)."
            )
        saved = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
        wanted = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        if saved != wanted:
            diff = sorted(set(saved.items()) ^ set(wanted.items()))[:3]
            raise ValueError(
                f"--ckpt_path={ckpt_path} holds a {theirs} of another shape than the configured "
                f"one (first differences, name and shape: {diff}): expected the options it was "
                "trained with."
            )

    def _instantiate_trainer(self, config: dict, callbacks: list) -> object:
        """As LightningCLI's, without the progress bar when ``enable_progress_bar`` is false."""
        if config.get("enable_progress_bar") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
        return super()._instantiate_trainer(config, callbacks)

    # ----------------------------------------------------------------------- after the run
    @rank_zero_only
    def _summary(self, subcommand: str) -> None:
        trainer = self.trainer
        print(f"\n=== icl-lightning {subcommand}: done ===")
        boards = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        for board in boards:
            print(f"TensorBoard logs: {board.log_dir}")
            print(f"  view them with: tensorboard --logdir {board.save_dir}")
        if trainer.checkpoint_callback and trainer.checkpoint_callback.last_model_path:
            print(f"Last checkpoint:  {trainer.checkpoint_callback.last_model_path}")
        metrics = trainer.callback_metrics
        if metrics:
            print("Final measurements:")
            for name in sorted(metrics, key=_natural_key):
                print(f"  {name:<32s} {float(metrics[name]): .6g}")

    def after_fit(self) -> None:
        self._summary("fit")

    def after_validate(self) -> None:
        self._summary("validate")

    def after_test(self) -> None:
        self._summary("test")


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``icl-lightning`` console script (exit 1 when stopped by SIGTERM or
    Ctrl+C, after ``last.ckpt`` was written)."""
    try:
        ICLLightningCLI(args=args)
    except SIGTERMException as stopped:
        raise SystemExit(1) from stopped


if __name__ == "__main__":
    main()
