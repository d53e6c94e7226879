"""A run that ends mid-epoch still validates at its last step, once; validation logs its means
once per loop."""

import torch
from conftest import CONFIGS, read_scalars, run_cli, tiny_args
from lightning.pytorch.callbacks import Callback

from icl_lightning.modules import ICLRegressionModule
from icl_lightning.theory.loss import prediction_loss

BLOCK = str(CONFIGS / "contextual_block.yaml")


class CountValidations(Callback):
    """Counts the validation loops that ran during fit (not the sanity check)."""

    def __init__(self) -> None:
        self.count = 0

    def on_validation_end(self, trainer, pl_module) -> None:
        self.count += not trainer.sanity_checking


# the probes' own schedule is not under test; count the validation loops instead
CHEAP_PROBES = ["--trainer.callbacks=[{class_path: test_validate_at_end.CountValidations}]"]


def _count(cli) -> int:
    return next(c for c in cli.trainer.callbacks if isinstance(c, CountValidations)).count


def _val_steps(cli) -> list[int]:
    """The steps of ``val/loss``, counted as Lightning logs them: the index of the last training
    batch before the validation (that batch's ``train/loss`` step)."""
    return sorted(read_scalars(cli.trainer.logger.log_dir)["val/loss"])


def test_max_steps_below_an_epoch_still_logs_val_loss(tmp_path):
    # 5 steps of a 500-batch epoch: Lightning alone would never validate
    args = ["fit", f"--config={BLOCK}", *tiny_args(tmp_path, steps=5), *CHEAP_PROBES]
    cli = run_cli([*args, "--data.init_args.batches_per_epoch=500"])
    assert _val_steps(cli) == [4]  # after the 5th (last) batch
    assert _count(cli) == 1
    assert "val/loss" in cli.trainer.callback_metrics


def test_a_last_step_that_ends_an_epoch_validates_once(tmp_path):
    args = ["fit", f"--config={BLOCK}", *tiny_args(tmp_path, steps=6), *CHEAP_PROBES]
    cli = run_cli(args)  # tiny_args: 3 batches per epoch, so steps 3 and 6 end epochs
    assert _val_steps(cli) == [2, 5]  # after batches 3 and 6 only
    assert _count(cli) == 2


def test_no_validation_is_added_where_the_user_turned_it_off(tmp_path):
    args = ["fit", f"--config={BLOCK}", *tiny_args(tmp_path, steps=5), *CHEAP_PROBES]
    cli = run_cli(
        [*args, "--data.init_args.batches_per_epoch=500", "--trainer.limit_val_batches=0"]
    )
    assert "val/loss" not in read_scalars(cli.trainer.logger.log_dir)


class CountLoops(Callback):
    """Counts every validation loop, the sanity check included."""

    def __init__(self) -> None:
        self.count = 0

    def on_validation_end(self, trainer, pl_module) -> None:
        self.count += 1


def test_val_loss_is_the_mean_over_the_validation_set_logged_once_per_loop(tmp_path, monkeypatch):
    """``val/loss`` equals the mean loss over every validation prompt (96 prompts in 6 batches
    of 16), and the module calls ``self.log`` once per metric and validation loop, not once per
    batch (each call costs more than a small model's validation step)."""
    from icl_lightning.data.datamodule import _VAL

    logged = []
    log = ICLRegressionModule.log

    def counting_log(self, name, *args, **kwargs):
        logged.append(name)
        return log(self, name, *args, **kwargs)

    monkeypatch.setattr(ICLRegressionModule, "log", counting_log)
    args = ["fit", f"--config={BLOCK}", *tiny_args(tmp_path, steps=6), "--data.batch_size=16"]
    cli = run_cli([*args, "--trainer.callbacks=[{class_path: test_validate_at_end.CountLoops}]"])
    loops = next(c for c in cli.trainer.callbacks if isinstance(c, CountLoops)).count
    assert loops == 3  # the sanity check, then after steps 3 and 6
    assert logged.count("val/loss") == logged.count("val/zero_loss") == loops
    val_set = cli.datamodule.eval_set(_VAL, torch.device("cpu"))
    assert len(val_set) == 96
    with torch.no_grad():
        expected = prediction_loss(cli.model(val_set), val_set.query_y).mean()
    torch.testing.assert_close(cli.trainer.callback_metrics["val/loss"], expected)


class OwnValidation(ICLRegressionModule):
    """A subclass with its own validation metric, not the base module's."""

    def validation_step(self, batch, batch_idx: int) -> None:
        self.log("val/own", prediction_loss(self(batch), batch.query_y).mean())


def test_a_subclass_validating_its_own_way_gets_no_empty_val_loss(tmp_path):
    args = ["fit", f"--config={BLOCK}", *tiny_args(tmp_path, steps=3), "--trainer.callbacks=[]"]
    cli = run_cli([*args, "--model.class_path=test_validate_at_end.OwnValidation"])
    scalars = read_scalars(cli.trainer.logger.log_dir)
    assert "val/own" in scalars and "val/loss" not in scalars
