"""The ``icl-lightning`` command: LightningCLI with this project's defaults.

``icl-lightning fit --config configs/demo.yaml`` trains; ``validate`` and ``test`` evaluate a
checkpoint (``--ckpt_path``). Model and data are chosen by ``class_path`` (any subclass of
:class:`ICLRegressionModule` and of ``LightningDataModule``); the module's network is named by
``model.model.class_path`` and the data's ``input_dim`` is linked into it. Defaults: a
TensorBoardLogger under ``logs/``, a rich progress bar, a ModelCheckpoint (``--checkpoint.*``)
and the resolved config saved in the run's directory. The optimizer and LR scheduler come from
``--optimizer`` / ``--lr_scheduler``.
"""

import re

from lightning.pytorch.callbacks import ModelCheckpoint, RichProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from icl_lightning.data.datamodule import ICLDataModule
from icl_lightning.modules.base import ICLRegressionModule


def _natural_key(name: str) -> list:
    """Sort key that puts ``loss_n2`` before ``loss_n10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


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
        parser.link_arguments(
            "data.input_dim", "model.init_args.model.init_args.input_dim", apply_on="instantiate"
        )
        parser.add_lightning_class_args(RichProgressBar, "progress_bar")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "model": {"class_path": "icl_lightning.modules.ICLRegressionModule"},
                "data": {"class_path": "icl_lightning.data.ICLDataModule"},
                "checkpoint.save_last": True,
                "trainer.logger": {
                    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                    "init_args": {"save_dir": "logs", "name": "icl"},
                },
            }
        )

    def instantiate_classes(self) -> None:
        """Build model, data, trainer; an impossible option becomes a usage error (exit 2)
        naming the option, before any training or logging starts."""
        try:
            super().instantiate_classes()
            for callback in self.trainer.callbacks:  # options that depend on the model
                if hasattr(callback, "check_model"):
                    callback.check_model(getattr(self.model, "model", self.model))
        except ValueError as error:
            self.parser.error(str(error))

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
    """Entry point of the ``icl-lightning`` console script."""
    ICLLightningCLI(args=args)


if __name__ == "__main__":
    main()
