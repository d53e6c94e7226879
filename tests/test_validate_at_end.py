"""A run that ends mid-epoch still validates at its last step, once."""

from conftest import CONFIGS, read_scalars, run_cli, tiny_args
from lightning.pytorch.callbacks import Callback

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
