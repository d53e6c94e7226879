"""Every private Lightning member this project relies on, in one place.

Lightning does not promise these across releases, so ``pyproject.toml`` admits only the tested
Lightning minor; an upgrade that changes one of them breaks here and in the test named beside
it. Everything else uses public hooks (callback and module hooks, ``trainer.save_checkpoint``,
``ModelCheckpoint.format_checkpoint_name`` and its public attributes, ``CheckpointIO``).

Used through the functions below:

- ``trainer.fit_loop.epoch_loop._batches_that_stepped``, the step at which Lightning logs every
  scalar: :func:`set_logging_step` (tests/test_checkpoints.py, the resume tests).
- The loop state in a checkpoint, ``checkpoint["loops"]["fit_loop"]`` with its
  ``epoch_progress`` and ``epoch_loop.batch_progress`` counters: :func:`fit_loop_progress`
  (same tests).
- ``ModelCheckpoint.state_dict()``'s ``dirpath`` and the paths under it:
  :func:`respell_folder` (tests/test_checkpoints.py::test_three_resumes_...).
- ``LightningCLI._dump_config`` and ``LightningCLI.config_dump``, the dumped config from which
  Lightning records the module's hyperparameters: :func:`add_link_parents`
  (tests/test_data_safety.py::test_network_whose_only_argument_is_input_dim_trains).

Relied on where they are used:

- ``ModelCheckpoint.state_key`` starts with the class name and ``{`` (Lightning's
  ``_generate_state_key``): ``RunCheckpoint.on_load_checkpoint`` finds its state stored under
  other options by it (tests/test_resume_safety.py::test_moved_run_resumed_with_...).
- TensorBoard's writer thread is a class of the ``tensorboard`` package:
  ``write_failure.quiet_writer_threads`` silences its traceback by that module name
  (tests/test_resume_safety.py::test_failing_tensorboard_writer_...).

Overridden in place (an override cannot move here):

- ``LightningCLI._instantiate_trainer`` in ``icl_lightning/cli.py``: the progress bar is left
  out under ``--trainer.enable_progress_bar=false`` (tests/test_flags.py).
- ``RichProgressBar._get_train_description`` in ``icl_lightning/progress.py``.
"""

from collections.abc import Iterable

import lightning as L


def set_logging_step(trainer: L.Trainer, step: int) -> None:
    """Make ``step`` the step at which Lightning logs the next scalars."""
    trainer.fit_loop.epoch_loop._batches_that_stepped = step


def fit_loop_progress(checkpoint: dict) -> tuple[dict | None, dict | None]:
    """``(epoch_progress, batch_progress)``: the fit loop's epoch and batch counters stored in
    ``checkpoint`` (dicts with ``total`` / ``current`` counts), or None where absent."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    return loop.get("epoch_progress"), loop.get("epoch_loop.batch_progress")


def respell_folder(state: dict, folder: str) -> dict:
    """A ModelCheckpoint state dict with its ``dirpath`` spelled ``folder``, and every path
    under the old spelling (a value, or a key of ``best_k_models``) moved under ``folder``."""
    old = state.get("dirpath")

    def moved(value):
        if isinstance(value, str) and old and value.startswith(old):
            return folder + value[len(old) :]
        if isinstance(value, dict):
            return {moved(k): v for k, v in value.items()}
        return value

    return {key: moved(value) for key, value in state.items()} | {"dirpath": folder}


def add_link_parents(cli, targets: Iterable[str]) -> None:
    """Dump ``cli``'s config now (as LightningCLI does at the first instantiation) with the
    parent mappings of every instantiation-link target present. jsonargparse leaves a network's
    ``init_args`` out of the dump when the link target is its only argument, and Lightning
    then fails to record the linked value ("Expected key ... to be in data")."""
    cli._dump_config()
    for target in targets:
        node = cli.config_dump
        for key in target.split(".")[:-1]:
            if not isinstance(node, dict):
                break
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
