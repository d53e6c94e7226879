"""Probe: the base class of every measuring callback.

A probe evaluates the training model on a fixed set of prompts (its own seed) every
``every_n_steps`` optimizer steps, at the start and at the end of training, and at the end of a
``validate`` or ``test`` run. The base class owns everything but the measurement itself:

- the evaluation set, drawn once on the module's device (once per curriculum size with
  ``size="current"``) and split into contiguous shares, one per DDP rank (a rank may own none;
  it still takes part in the reduction, so nothing hangs);
- eval mode and ``torch.no_grad`` (both restored afterwards), and an optional float64 copy of
  the model;
- one all-reduce of all sums (``trainer.strategy.reduce``), so the numbers do not depend on the
  number of processes;
- logging: scalars under ``<namespace>/`` (``<namespace>/<tag>/`` with ``tag``) to every
  logger and ``trainer.callback_metrics`` at every measurement, figures to TensorBoard once
  at the end of training (drawing them costs several measurements) and at the end of
  ``validate`` / ``test``, both from global rank zero only;
- the history of its scalars over training steps (for curve figures) and ``state_dict`` for
  resume.

A subclass implements :meth:`compute` (sums over one chunk of prompts) and may override
:meth:`finalize` (sums -> results), :meth:`scalars` and :meth:`figures`. Its mistakes are errors
naming it: a :meth:`compute` that returns anything but a dict of tensors, or per-prompt values
(shapes that follow the chunk's size), and a non-scalar result the default :meth:`scalars` would
have to drop (unless named in :attr:`Probe.figure_only`).
"""

import copy
import re
from typing import Literal

import lightning as L
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure
from torch import nn
from typing_extensions import override

from icl_lightning.callbacks.comparisons import ComparisonRuns, layout_charts, thinned
from icl_lightning.checks import require
from icl_lightning.data.batch import ICLBatch
from icl_lightning.data.curriculum import Curriculum
from icl_lightning.data.seeding import seeded_generator
from icl_lightning.data.sharding import shard
from icl_lightning.data.tasks import TaskSampler
from icl_lightning.loggers import tensorboard_loggers

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def predict(model: nn.Module, batch: ICLBatch) -> torch.Tensor:
    """The model's query predictions ``(B,)`` for ``batch``."""
    return model(batch.context_x, batch.context_y, batch.query_x)


class Probe(Callback):
    """Base class of the measuring callbacks.

    Args:
        every_n_steps: measure every this many optimizer steps (0: only at the start and end).
        num_tasks: size of the fixed evaluation set.
        batch_size: prompts per chunk when evaluating (bounds memory, not the result).
        seed: seed of the evaluation set.
        dtype: ``"float32"`` or ``"float64"`` (a float64 copy of the model is evaluated).
        task: task distribution of the evaluation set (default: the datamodule's).
        num_context: context points per prompt (default: the datamodule's).
        log_figures: send figures to TensorBoard.
        size: ``"full"``: evaluate at the full size (the task's ``input_dim`` and
            ``num_context``) throughout; ``"current"``: at the training curriculum's size at
            the step of each measurement (``ICLDataModule(curriculum=...)``): tasks in the first
            ``dims`` coordinates, other inputs 0, and ``points`` context points. One evaluation
            set per size (same seed; at the full size it is the ``"full"`` set), drawn once;
            the sizes measured are logged as ``<namespace>/dims`` and ``<namespace>/points``.
            The step is ``trainer.global_step``, which Lightning's ``validate`` and ``test``
            start at 0: there the probe measures at the curriculum's first size.
        tag: a sub-namespace: scalars and figures go to ``<namespace>/<tag>/<name>`` instead of
            ``<namespace>/<name>`` (two probes of one class in one run need different tags).

    Raises:
        ValueError: for an impossible option, or when neither the probe nor the datamodule
            says which task and context length to evaluate.
    """

    namespace = "probe"
    #: Names of :meth:`compute` outputs that are maxima over prompts, not sums: combined by
    #: ``max`` over chunks and DDP ranks (``trainer.strategy.all_gather``), not divided by the
    #: default :meth:`finalize`.
    maxima: tuple[str, ...] = ()
    #: Charts of TensorBoard's Custom Scalars tab, ``{title: regex}``: each chart overlays the
    #: scalars whose names (without the prefix) match its regex in full. Names no chart matches
    #: are grouped by their first word (``loss_model``, ``loss_gd`` -> chart ``loss``).
    charts: dict[str, str] = {}
    #: Names of non-scalar results (after :meth:`finalize`) that only :meth:`figures` draws: the
    #: default :meth:`scalars` leaves them out. Any other non-scalar result is an error there.
    figure_only: tuple[str, ...] = ()

    def __init__(
        self,
        every_n_steps: NonNegativeInt = 100,
        num_tasks: PositiveInt = 2048,
        batch_size: PositiveInt = 1024,
        seed: NonNegativeInt = 2024,
        dtype: Literal["float32", "float64"] = "float32",
        task: TaskSampler | None = None,
        num_context: PositiveInt | None = None,
        log_figures: bool = True,
        size: Literal["full", "current"] = "full",
        tag: str | None = None,
    ) -> None:
        require(every_n_steps >= 0, "every_n_steps", every_n_steps, "an integer >= 0")
        require(num_tasks >= 1, "num_tasks", num_tasks, "an integer >= 1")
        require(batch_size >= 1, "batch_size", batch_size, "an integer >= 1")
        require(dtype in _DTYPES, "dtype", dtype, "'float32' or 'float64'")
        require(num_context is None or num_context >= 1, "num_context", num_context, ">= 1")
        require(size in ("full", "current"), "size", size, "'full' or 'current'")
        require(
            size == "full" or num_context is None,
            "num_context",
            num_context,
            "None with size='current' (the curriculum sets the context length)",
        )
        require(
            tag is None or re.fullmatch(r"[A-Za-z0-9_.=+-]+", tag) is not None,
            "tag",
            tag,
            "None or a name of letters, digits and _.=+- (no '/')",
        )
        self.every_n_steps = int(every_n_steps)
        self.num_tasks = int(num_tasks)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.dtype = _DTYPES[dtype]
        self.task = task
        self.num_context = None if num_context is None else int(num_context)
        self.log_figures = log_figures
        self.size = size
        self.tag = tag
        self.last_step: int | None = None
        self.last_results: dict[str, float] = {}
        #: every measurement so far, ``{step: {name: value}}`` (no namespace), for curves
        self.history: dict[int, dict[str, float]] = {}
        #: the evaluation sets drawn so far, by ``(device, dims, points)`` (``dims = points =
        #: None``: the full size)
        self._evaluation_sets: dict[tuple, ICLBatch] = {}
        self._results: dict[str, torch.Tensor] | None = None  # the latest, for the figures
        #: whether :meth:`_computed` has compared compute's shapes on a chunk and on one prompt
        self._shapes_checked = False
        #: the compared curves' sibling runs, by the TensorBoard run folder they belong to
        self._sibling_runs: dict[str, ComparisonRuns] = {}

    # ----------------------------------------------------------------- what subclasses write
    def compute(self, model: nn.Module, batch: ICLBatch) -> dict[str, torch.Tensor]:
        """Sums over the prompts of ``batch`` (tensors of any fixed shape), to be all-reduced.

        ``model`` is the module's ``model`` in the probe's dtype, in eval mode, under no_grad
        (``torch.func`` transforms still differentiate).
        """
        raise NotImplementedError

    def finalize(self, sums: dict[str, torch.Tensor], count: int) -> dict[str, torch.Tensor]:
        """Results from the globally reduced sums over ``count`` prompts; default: means."""
        return {k: v if k in self.maxima else v / count for k, v in sums.items()}

    def scalars(self, results: dict[str, torch.Tensor]) -> dict[str, float]:
        """The scalars to log (namespace added by the base); default: every result, each 0-d
        (a ``ValueError`` naming the probe otherwise), but those in :attr:`figure_only`."""
        logged = {name: v for name, v in results.items() if name not in self.figure_only}
        for name, v in logged.items():
            if torch.as_tensor(v).ndim != 0:
                raise ValueError(
                    f"{type(self).__name__}: result {name!r} has shape "
                    f"{tuple(torch.as_tensor(v).shape)}, but "
                    "the probe logs scalars. Return sums over the prompts from compute (0-d "
                    "for a scalar, e.g. `.sum()` of per-prompt values), or name a result that "
                    f"only figures draw in {type(self).__name__}.figure_only, or override "
                    "scalars()."
                )
        return {name: float(v) for name, v in logged.items()}

    def figures(self, results: dict[str, torch.Tensor]) -> dict[str, Figure]:
        """Figures to log, by tag (namespace added by the base); default: none."""
        return {}

    def check(self, pl_module: "L.LightningModule", datamodule: object) -> None:
        """Raise ``ValueError`` naming the option when this probe cannot measure ``pl_module``
        on ``datamodule``'s prompts; the CLI calls it before training. The base requires a
        ``model`` (an ``nn.Module``) that :meth:`check_model` accepts, and a probe task of the
        data's input dimension."""
        model = self._network(pl_module)
        try:
            self.check_model(model)
        except ValueError as error:
            name, kind = type(self).__name__, type(model).__name__
            raise ValueError(f"{name} cannot measure a {kind}: {error}") from error
        if self.size == "current":
            self._curriculum(datamodule)
        data_dim = getattr(datamodule, "input_dim", None)
        if self.task is not None and data_dim is not None:
            require(
                self.task.input_dim == data_dim,
                f"{type(self).__name__}.task.input_dim",
                self.task.input_dim,
                f"the data's input_dim, {data_dim} (the model reads inputs of that size)",
            )

    def check_model(self, model: nn.Module) -> None:
        """Raise ``ValueError`` when this probe cannot measure ``model``. The base needs only
        ``model(context_x, context_y, query_x)``; a probe that needs more declares it here."""

    # ----------------------------------------------------------------------- the machinery
    def __getattr__(self, name: str):
        """Only reached for an attribute that is missing: when ``__init__`` did not call
        ``super().__init__()``, an error naming the class says so (instead of the first of the
        base's attributes that the Trainer or the CLI happens to read)."""
        if not name.startswith("__") and "history" not in vars(self):
            cls = type(self).__name__
            raise AttributeError(
                f"{cls}.__init__ does not call super().__init__(...): the Probe base's options "
                f"and state are missing ({name!r} first). Call it in {cls}.__init__."
            )
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    @property
    def prefix(self) -> str:
        """The start of every tag: ``<namespace>/``, or ``<namespace>/<tag>/`` with ``tag``."""
        return f"{self.namespace}/" if self.tag is None else f"{self.namespace}/{self.tag}/"

    def task_and_context(self, trainer: "L.Trainer") -> tuple[TaskSampler, int]:
        """The probe's ``task`` and ``num_context``, each defaulting to the datamodule's; a
        ValueError naming them when neither gives one."""
        datamodule = trainer.datamodule
        task = self.task or getattr(datamodule, "task", None)
        num_context = self.num_context or getattr(datamodule, "num_context", None)
        require(
            task is not None and num_context is not None,
            f"{type(self).__name__}.task/num_context",
            (task, num_context),
            "a task and a context length, given to the probe or by the datamodule",
        )
        return task, num_context

    def evaluation_set(self, trainer: "L.Trainer", device: torch.device) -> ICLBatch:
        """The whole fixed evaluation set on ``device``, at the size :meth:`current_size` gives
        (drawn once per size and device, then cached)."""
        size = self.current_size(trainer)
        key = (str(device), *(size or (None, None)))
        if key not in self._evaluation_sets:
            task, num_context = self.task_and_context(trainer)
            generator = seeded_generator(device, self.seed)
            if size is None:
                tasks = task.sample(self.num_tasks, num_context, generator)
            else:
                dims, points = size
                tasks = task.sample_in_subspace(self.num_tasks, points, dims, generator)
            kept = {k: v for k, v in self._evaluation_sets.items() if k[0] == key[0]}
            self._evaluation_sets = kept | {key: tasks}  # sets on another device are dropped
        return self._evaluation_sets[key]

    def current_size(self, trainer: "L.Trainer") -> tuple[int, int] | None:
        """``(dims, points)``, the datamodule's curriculum size at ``trainer.global_step`` when
        ``size="current"`` (a pure function of the step); ``None`` for the full size."""
        if self.size == "full":
            return None
        datamodule = trainer.datamodule
        curriculum = self._curriculum(datamodule)
        return curriculum.size(trainer.global_step, datamodule.input_dim, datamodule.num_context)

    def _curriculum(self, datamodule: object) -> Curriculum:
        """The datamodule's curriculum, or a ValueError naming ``size``."""
        curriculum = getattr(datamodule, "curriculum", None)
        require(
            isinstance(curriculum, Curriculum),
            f"{type(self).__name__}.size",
            self.size,
            "'full' unless the datamodule trains with a curriculum (data.init_args.curriculum): "
            "'current' measures at the curriculum's current size",
        )
        return curriculum

    def _network(self, pl_module: "L.LightningModule") -> nn.Module:
        """``pl_module.model``, or a ValueError naming it when it is not an ``nn.Module``."""
        model = getattr(pl_module, "model", None)
        require(
            isinstance(model, nn.Module),
            f"{type(self).__name__}: {type(pl_module).__name__}.model",
            type(model).__name__,
            "an nn.Module taking (context_x, context_y, query_x); probes evaluate it",
        )
        return model

    def _model(self, pl_module: "L.LightningModule") -> nn.Module:
        model = self._network(pl_module)
        if next(model.parameters()).dtype != self.dtype:
            model = copy.deepcopy(model).to(self.dtype)
        return model

    def measure(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> dict:
        """Evaluate this rank's share, all-reduce the sums, finalize. Called on every rank."""
        model = self._model(pl_module)
        tasks = self.evaluation_set(trainer, pl_module.device).to(self.dtype)
        start, stop = shard(len(tasks), trainer.global_rank, trainer.world_size)
        chunks = tasks[start:stop].split(self.batch_size)
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                if chunks:
                    parts = [self._computed(model, chunk) for chunk in chunks]
                    sums = {k: self._combine(k, [p[k] for p in parts]) for k in parts[0]}
                else:  # an empty share still joins the reduction (zeros; -inf for maxima)
                    one = self._computed(model, tasks[:1])
                    empty = {k: -torch.inf if k in self.maxima else 0.0 for k in one}
                    sums = {k: torch.full_like(v, empty[k]) for k, v in one.items()}
        finally:
            model.train(was_training)
        names = [k for k in sums if k not in self.maxima]
        packed = torch.cat(
            [torch.tensor([stop - start], dtype=self.dtype, device=tasks.query_y.device)]
            + [sums[k].reshape(-1).to(self.dtype) for k in names]
        )
        packed = trainer.strategy.reduce(packed, reduce_op="sum")
        count, offset, reduced = int(packed[0].round()), 1, {}
        for k in names:
            reduced[k] = packed[offset : offset + sums[k].numel()].reshape(sums[k].shape)
            offset += sums[k].numel()
        for k in self.maxima:  # the same names on every rank, so every rank joins the gather
            gathered = trainer.strategy.all_gather(sums[k].to(self.dtype))
            reduced[k] = gathered.reshape(-1, *sums[k].shape).amax(0)
        return self.finalize(reduced, count)

    def _computed(self, model: nn.Module, chunk: ICLBatch) -> dict[str, torch.Tensor]:
        """:meth:`compute` on ``chunk``, checked: a dict of tensors whose shapes do not depend
        on the number of prompts (it is evaluated on the chunk and on its first prompt
        alone, once per probe), else a ``ValueError`` naming the probe and the value."""
        sums = self.compute(model, chunk)
        name = type(self).__name__
        if not isinstance(sums, dict) or not all(
            isinstance(v, torch.Tensor) for v in sums.values()
        ):
            got = type(sums).__name__ if not isinstance(sums, dict) else "a dict of non-tensors"
            raise ValueError(
                f"{name}.compute returned {got}; expected a dict of tensors, {{name: sum over "
                "the chunk's prompts}."
            )
        if not self._shapes_checked and len(chunk) > 1:
            one = self.compute(model, chunk[:1])
            for key, value in sums.items():
                if key in one and one[key].shape != value.shape:
                    raise ValueError(
                        f"{name}.compute returned {key!r} of shape {tuple(value.shape)} for "
                        f"{len(chunk)} prompts but {tuple(one[key].shape)} for one: "
                        "per-prompt values. Return their sum over the chunk's prompts "
                        "(e.g. `.sum(0)`); finalize divides by the count."
                    )
            self._shapes_checked = True
        return sums

    def _combine(self, name: str, parts: list[torch.Tensor]) -> torch.Tensor:
        """One rank's chunks combined: summed, or the maximum for names in :attr:`maxima`."""
        return torch.stack(parts).amax(0) if name in self.maxima else sum(parts)

    def run(
        self, trainer: "L.Trainer", pl_module: "L.LightningModule", figures: bool = True
    ) -> None:
        """Measure once at the current global step and log the scalars, and the figures too
        when ``figures``."""
        step = trainer.global_step
        results = self._results = self.measure(trainer, pl_module)
        self.history[step] = self.scalars(results)
        size = self.current_size(trainer)
        if size is not None:
            self.history[step] |= {"dims": float(size[0]), "points": float(size[1])}
        scalars = {f"{self.prefix}{k}": v for k, v in self.history[step].items()}
        self.last_step, self.last_results = step, scalars
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in scalars.items()})
        if not trainer.is_global_zero:
            return
        for logger in trainer.loggers:
            logger.log_metrics(scalars, step=step)
        for board in tensorboard_loggers(trainer):
            charts = self.chart_tags()
            self._comparison_runs(board.log_dir).write(self.prefix, charts, scalars, step)
        if self.log_figures and figures:
            self._log_figures(trainer, results, step)

    def _log_figures(self, trainer: "L.Trainer", results: dict, step: int) -> None:
        boards = tensorboard_loggers(trainer)
        if not boards:
            rank_zero_warn(f"{type(self).__name__}: no TensorBoardLogger, figures not logged.")
            return
        for tag, figure in self.figures(results).items():
            for board in boards:
                board.experiment.add_figure(f"{self.prefix}{tag}", figure, step, close=False)

    def _comparison_runs(self, log_dir: str) -> ComparisonRuns:
        """The sibling runs of ``log_dir`` that hold this probe's compared curves."""
        if log_dir not in self._sibling_runs:
            self._sibling_runs[log_dir] = ComparisonRuns(log_dir)
        return self._sibling_runs[log_dir]

    @override
    def teardown(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        for runs in self._sibling_runs.values():
            runs.close()
        self._sibling_runs.clear()

    def chart_tags(self) -> dict[str, list[str]]:
        """This probe's charts, ``{title: [tag, ...]}``, over the scalars of its latest
        measurement, a series over an index thinned to three curves
        (:func:`~icl_lightning.callbacks.comparisons.thinned`); a chart of two or more tags is
        a comparison (:mod:`~icl_lightning.callbacks.comparisons`)."""
        return {title: thinned(tags) for title, (_, tags) in self.layout().items()}

    def layout(self) -> dict[str, list]:
        """This probe's charts, ``{title: ["Multiline", [tag, ...]]}``, over the scalars of its
        latest measurement (only charts with a tag the run logs). A name's path (``block2/`` in
        ``block2/loss_context``) stays apart: it starts the chart's title."""
        names = sorted(self.history[max(self.history)]) if self.history else []
        charts: dict[str, list[str]] = {}
        for name in names:
            path, _, leaf = name.rpartition("/")
            title = next(
                (t for t, regex in self.charts.items() if re.fullmatch(regex, leaf)),
                leaf.split("_")[0],
            )
            charts.setdefault(f"{path}: {title}" if path else title, []).append(
                f"{self.prefix}{name}"
            )
        return {title: ["Multiline", tags] for title, tags in charts.items()}

    # ----------------------------------------------------------------------------- hooks
    def _due(self, trainer: "L.Trainer") -> bool:
        step = trainer.global_step
        periodic = self.every_n_steps > 0 and step % self.every_n_steps == 0
        return periodic and step != self.last_step and not trainer.sanity_checking

    @override
    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        """Measure at the first step; the last probe of the run then writes the merged Custom
        Scalars layout of every probe (all have measured by then)."""
        if trainer.global_step != self.last_step:
            self.run(trainer, pl_module, figures=False)
        probes = [cb for cb in trainer.callbacks if isinstance(cb, Probe)]
        if trainer.is_global_zero and probes[-1] is self:
            write_layout(trainer, probes)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._due(trainer):
            self.run(trainer, pl_module, figures=False)

    @override
    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        """The last measurement (unless the last step already had one), then the figures."""
        if trainer.global_step != self.last_step:
            self.run(trainer, pl_module)
        elif self.log_figures and trainer.is_global_zero and self._results is not None:
            self._log_figures(trainer, self._results, trainer.global_step)

    @override
    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if trainer.state.fn == "validate":
            self.run(trainer, pl_module)

    @override
    def on_test_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self.run(trainer, pl_module)

    @property
    @override
    def state_key(self) -> str:
        """The class name, plus ``tag`` when given: probes of one class in one run keep their
        own state in a checkpoint when their tags differ."""
        return super().state_key if self.tag is None else self._generate_state_key(tag=self.tag)

    @override
    def state_dict(self) -> dict:
        return {
            "last_step": self.last_step,
            "last_results": self.last_results,
            "history": self.history,
        }

    @override
    def load_state_dict(self, state_dict: dict) -> None:
        self.last_step = state_dict["last_step"]
        self.last_results = state_dict["last_results"]
        self.history = state_dict.get("history", {})


def write_layout(trainer: "L.Trainer", probes: list[Probe]) -> None:
    """Write one Custom Scalars layout for ``probes`` to every TensorBoard logger: a category per
    namespace (``<namespace>/<tag>`` with a tag), probes of one namespace merged, so TensorBoard
    overlays each probe's comparisons (model vs GD losses, SGD vs Delta W) live, each curve its
    own sibling run and colour (:func:`~icl_lightning.callbacks.comparisons.layout_charts`)."""
    layout: dict[str, dict[str, list]] = {}
    for probe in probes:
        category = layout.setdefault(probe.prefix.rstrip("/"), {})
        charts = layout_charts(probe.prefix, probe.chart_tags(), probe.every_n_steps)
        for title, (kind, tags) in charts.items():
            merged = category.setdefault(title, [kind, []])[1]
            merged.extend(tag for tag in tags if tag not in merged)
    layout = {name: charts for name, charts in layout.items() if charts}
    if layout:
        for board in tensorboard_loggers(trainer):
            board.experiment.add_custom_scalars(layout)
