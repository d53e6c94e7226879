"""FinalMetrics: the run's key options and final measurements in TensorBoard's hparams tab."""

import lightning as L
from lightning.pytorch.callbacks import Callback
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard.summary import hparams
from typing_extensions import override

from icl_lightning.callbacks.comparisons import INDEXED
from icl_lightning.loggers import tensorboard_loggers


def _init_args(options: dict | None) -> dict:
    return (options or {}).get("init_args") or {}


def _class_name(options: dict | None) -> str | None:
    path = (options or {}).get("class_path")
    return path.rsplit(".", 1)[-1] if path else None


def hparams_summaries(chosen: dict, metrics: dict) -> tuple[Summary, Summary, Summary]:
    """TensorBoard's hparams summaries (experiment, session start, session end) of ``chosen``
    options and ``metrics`` (tag -> final value), the options listed in ``chosen``'s order:
    TensorBoard sorts options by name and ticks the first five, so each is named
    ``<k>.<name>`` (``0.task``, ``1.d``, ...) and displayed as ``<name>``."""
    named = {f"{k}.{name}": value for k, (name, value) in enumerate(chosen.items())}
    experiment, start, end = hparams(named, metrics)
    value = experiment.value[0]
    data = HParamsPluginData.FromString(value.metadata.plugin_data.content)
    for info in data.experiment.hparam_infos:
        info.display_name = info.name.split(".", 1)[1]
    value.metadata.plugin_data.content = data.SerializeToString()
    return experiment, start, end


def key_hparams(options: dict) -> dict:
    """The options a reader compares runs by, under short names, in this order: ``task`` (its
    class name), ``d`` (input dimension), ``N`` (context length), ``L`` (layers or blocks),
    ``lr``, ``seed`` (``seed_everything``), ``heads`` and ``model`` (the network's class name);
    those a run does not have are left out. TensorBoard ticks the first five, and first those
    that differ between the runs shown. Every option stays in ``config.yaml`` and
    ``hparams.yaml``."""
    data = _init_args(options.get("data"))
    network = _init_args(options.get("model")).get("model")
    layers = _init_args(network)
    chosen = {
        "task": _class_name(data.get("task")),
        "d": _init_args(data.get("task")).get("input_dim"),
        "N": data.get("num_context"),
        "L": layers.get("num_layers", layers.get("num_blocks")),
        "lr": _init_args(options.get("optimizer")).get("lr"),
        "seed": options.get("seed_everything"),
        "heads": layers.get("num_heads"),
        "model": _class_name(network),
    }
    return {name: value for name, value in chosen.items() if value is not None}


class FinalMetrics(Callback):
    """At the end of training, write the hparams tab's entry of this run: :func:`key_hparams`
    of ``options`` beside the final value of each one-number metric (``val/loss``, each probe's
    scalars; not ``train/*``, not per-index series such as ``context/loss_n7``).

    The entry names the metrics' own tags, whose last values TensorBoard shows: no ``hp/``
    copies of the curves are written. All of ``options`` goes to ``hparams.yaml``.

    Args:
        options: the run's options, e.g. the CLI's ``model``, ``data``, ``optimizer`` and
            ``seed_everything``.
    """

    def __init__(self, options: dict) -> None:
        self.options = options

    @override
    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = {
            name: float(value)
            for name, value in trainer.callback_metrics.items()
            if value.numel() == 1 and not name.startswith("train/") and not INDEXED.fullmatch(name)
        }
        if not metrics:
            return
        experiment, start, end = hparams_summaries(key_hparams(self.options), metrics)
        for board in tensorboard_loggers(trainer):
            board.log_hyperparams(self.options)  # hparams.yaml (no summary: no metrics given)
            writer = board.experiment._get_file_writer()  # torch's, as Lightning's own call
            for summary in (experiment, start, end):
                writer.add_summary(summary, trainer.global_step)
