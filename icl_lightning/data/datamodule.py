"""ICLDataModule: prompts generated on the training device, no DataLoader workers."""

from typing import NamedTuple

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from typing_extensions import override

from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.data.curriculum import Curriculum
from icl_lightning.data.seeding import seeded_generator
from icl_lightning.data.sharding import shard
from icl_lightning.data.tasks import LinearRegression, TaskSampler

_TRAIN, _VAL, _TEST = 0, 1, 2


class _TrainKey(NamedTuple):
    micro_step: int  # position inside one gradient-accumulation window


class _EvalKey(NamedTuple):
    start: int
    stop: int


class _KeyStream:
    """A sized iterable of batch keys; the batches themselves are made on the device."""

    def __init__(self, keys: list) -> None:
        self.keys = keys

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


class ICLDataModule(L.LightningDataModule):
    """Fresh regression prompts every training step, a fixed set for validation and test.

    A training batch is a pure function of ``(seed, global step, micro step, DDP rank)``: the
    same on every run, different on every rank, and the batch of step k again after resuming
    at step k. It is drawn directly on the module's device in ``on_after_batch_transfer``;
    the loader only yields keys. Validation (and test) use ``num_val_tasks`` fixed prompts drawn
    from ``val_seed`` (and ``val_seed + 1``), split across DDP ranks.

    Args:
        task: the task distribution (any :class:`TaskSampler`).
        batch_size: prompts per training step and per rank (per validation chunk, too).
        num_context: N, context points per prompt.
        seed: seed of the training stream.
        val_seed: seed of the fixed validation set.
        num_val_tasks: size of the fixed validation set (and of the test set).
        batches_per_epoch: training steps per epoch (validation runs at each epoch's end unless
            the trainer's ``val_check_interval`` says otherwise).
        curriculum: grow the input dimension and context length of the training prompts with
            the step (Garg et al. 2022; see :class:`~icl_lightning.data.curriculum.Curriculum`).
            Validation and test prompts stay at the full size.

    Raises:
        ValueError: for an impossible option; the message names it.

    Example::

        dm = ICLDataModule(LinearRegression(input_dim=10), batch_size=2048, num_context=10)
        trainer.fit(module, datamodule=dm)
    """

    def __init__(
        self,
        task: TaskSampler | None = None,
        batch_size: PositiveInt = 2048,
        num_context: PositiveInt = 10,
        seed: NonNegativeInt = 0,
        val_seed: NonNegativeInt = 12345,
        num_val_tasks: PositiveInt = 10_000,
        batches_per_epoch: PositiveInt = 100,
        curriculum: Curriculum | None = None,
    ) -> None:
        super().__init__()
        for option, value in [
            ("batch_size", batch_size),
            ("num_context", num_context),
            ("num_val_tasks", num_val_tasks),
            ("batches_per_epoch", batches_per_epoch),
        ]:
            require(isinstance(value, int) and value >= 1, option, value, "an integer >= 1")
        self.task = task if task is not None else LinearRegression()
        if curriculum is not None:
            curriculum = curriculum.checked(self.task.input_dim, int(num_context))
        self.curriculum = curriculum
        # plain ints: jsonargparse's PositiveInt would not unpickle from a weights-only checkpoint
        self.batch_size = int(batch_size)
        self.num_context = int(num_context)
        self.seed = int(seed)
        self.val_seed = int(val_seed)
        self.num_val_tasks = int(num_val_tasks)
        self.batches_per_epoch = int(batches_per_epoch)
        self._eval_sets: dict[int, ICLBatch] = {}

    @property
    def input_dim(self) -> int:
        """d, the task's input dimension (linked into the model by the CLI)."""
        return self.task.input_dim

    def train_batch(
        self, step: int, rank: int = 0, micro_step: int = 0, device: str = "cpu"
    ) -> ICLBatch:
        """The training batch of optimizer step ``step`` on DDP rank ``rank``."""
        generator = seeded_generator(device, self.seed, _TRAIN, step, micro_step, rank)
        if self.curriculum is None:
            return self.task.sample(self.batch_size, self.num_context, generator)
        d, n = self.curriculum.size(step, self.input_dim, self.num_context)
        return self.task.sample_in_subspace(self.batch_size, n, d, generator)

    def eval_set(self, stage: int, device) -> ICLBatch:
        """The whole fixed validation (``stage=1``) or test (``stage=2``) set, cached per device."""
        device = torch.device(device)
        if stage not in self._eval_sets or self._eval_sets[stage].query_y.device != device:
            generator = seeded_generator(device, self.val_seed + stage - _VAL, stage)
            self._eval_sets[stage] = self.task.sample(
                self.num_val_tasks, self.num_context, generator
            )
        return self._eval_sets[stage]

    def _eval_keys(self) -> _KeyStream:
        world_size = self.trainer.world_size if self.trainer else 1
        rank = self.trainer.global_rank if self.trainer else 0
        require(
            self.num_val_tasks >= world_size,
            "num_val_tasks",
            self.num_val_tasks,
            f"at least one task per process ({world_size} processes)",
        )
        start, stop = shard(self.num_val_tasks, rank, world_size)
        bounds = range(start, stop, self.batch_size)
        return _KeyStream([_EvalKey(a, min(a + self.batch_size, stop)) for a in bounds])

    @override
    def train_dataloader(self) -> _KeyStream:
        return _KeyStream([_TrainKey(i) for i in range(self.batches_per_epoch)])

    @override
    def val_dataloader(self) -> _KeyStream:
        return self._eval_keys()

    @override
    def test_dataloader(self) -> _KeyStream:
        return self._eval_keys()

    @override
    def transfer_batch_to_device(self, batch, device: torch.device, dataloader_idx: int):
        """The key as it is: it holds no tensor, so Lightning's default (which walks it as a
        collection, a few microseconds a step) moves nothing; :meth:`on_after_batch_transfer`
        makes its batch on the device."""
        return batch

    @override
    def on_after_batch_transfer(self, batch, dataloader_idx: int) -> ICLBatch:
        trainer = self.trainer
        device = trainer.strategy.root_device
        if isinstance(batch, _TrainKey):
            micro_step = batch.micro_step % trainer.accumulate_grad_batches
            if self.curriculum is not None and micro_step == 0:
                self._log_curriculum(trainer.global_step)
            prompts = self.train_batch(trainer.global_step, trainer.global_rank, micro_step, device)
        else:
            stage = _TEST if trainer.testing else _VAL
            prompts = self.eval_set(stage, device)[batch.start : batch.stop]
        # in the module's dtype: float64 under precision 64-true, float16 under 16-true
        dtype = trainer.lightning_module.dtype
        return prompts if prompts.query_y.dtype == dtype else prompts.to(dtype)

    def _log_curriculum(self, step: int) -> None:
        """Log ``curriculum/dims`` and ``curriculum/points`` at step 0 and where they change."""
        size = self.curriculum.size(step, self.input_dim, self.num_context)
        if step > 0 and size == self.curriculum.size(step - 1, self.input_dim, self.num_context):
            return
        if self.trainer.is_global_zero:
            for logger in self.trainer.loggers:
                logger.log_metrics({"curriculum/dims": size[0], "curriculum/points": size[1]}, step)

    @override
    def state_dict(self) -> dict:
        return {"seed": self.seed, "val_seed": self.val_seed}

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.seed = state_dict["seed"]
        self.val_seed = state_dict["val_seed"]
