"""Mixed precision and the GPU path.

bf16-mixed trains under autocast while probes evaluate outside it, in their own dtype (checked on
CPU, where Lightning's bf16-mixed also works). The CUDA tests run wherever a GPU is present and are
skipped elsewhere; CI has none.
"""

import lightning as L
import pytest
import torch
from conftest import CONFIGS, run_cli, tiny_args

from icl_lightning.callbacks import ContextLengthProbe
from icl_lightning.data import ICLDataModule, LinearRegression
from icl_lightning.models import LSA
from icl_lightning.modules import ICLRegressionModule

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class _DtypeRecorder(ContextLengthProbe):
    """ContextLengthProbe that records the dtype and autocast state it computes under."""

    seen: list

    def compute(self, model, batch):
        self.seen.append(
            (
                batch.context_x.dtype,
                next(model.parameters()).dtype,
                torch.is_autocast_enabled("cpu"),
            )
        )
        return super().compute(model, batch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bf16_mixed_training_with_probes_in_their_own_dtype(tmp_path, dtype):
    probe = _DtypeRecorder(every_n_steps=2, num_tasks=16, dtype=str(dtype).split(".")[1])
    probe.seen = []
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        precision="bf16-mixed",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[probe],
        default_root_dir=tmp_path,
        limit_val_batches=0,
    )
    module = ICLRegressionModule(LSA(3))
    dm = ICLDataModule(LinearRegression(input_dim=3), batch_size=16, num_context=5)
    trainer.fit(module, datamodule=dm)
    assert probe.seen and all(s == (dtype, dtype, False) for s in probe.seen)
    assert next(module.parameters()).dtype == torch.float32  # master weights untouched
    assert torch.isfinite(torch.tensor(list(probe.last_results.values()))).all()


class _NoSyncModule(ICLRegressionModule):
    """Fails on any host-device synchronisation inside the training step."""

    def training_step(self, batch, batch_idx):
        torch.cuda.set_sync_debug_mode("error")
        try:
            return super().training_step(batch, batch_idx)
        finally:
            torch.cuda.set_sync_debug_mode("default")


@needs_cuda
@pytest.mark.gpu
@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_every_config_trains_on_gpu(config, precision, tmp_path):
    args = ["fit", f"--config={config}", *tiny_args(tmp_path)]
    args = [a for a in args if a != "--trainer.accelerator=cpu"]
    cli = run_cli(
        [
            *args,
            "--trainer.accelerator=gpu",
            "--trainer.devices=1",
            f"--trainer.precision={precision}",
        ]
    )
    assert cli.model.device.type == "cuda"
    assert torch.isfinite(cli.trainer.callback_metrics["train/loss"])


@needs_cuda
@pytest.mark.gpu
def test_training_step_has_no_host_sync(tmp_path):
    trainer = L.Trainer(
        max_steps=5,
        accelerator="gpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        limit_val_batches=0,
    )
    dm = ICLDataModule(LinearRegression(input_dim=10), batch_size=256, num_context=10)
    trainer.fit(_NoSyncModule(LSA(10)), datamodule=dm)
    assert trainer.global_step == 5
