"""Checks the CLI runs before any work: each raises ``ValueError`` naming the option or file and
what was expected (the CLI turns it into a usage error, exit 2)."""

import os
import tempfile
import zipfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.cli import instantiate_class

from icl_lightning.checkpointing.run_record import RUN_RECORD_KEY, changed_options
from icl_lightning.modules.base import NETWORK_CLASS_KEY, network_class

#: ``--ckpt_path`` values that Lightning resolves itself
LIGHTNING_CKPT_NAMES = ("last", "best", "hpc", "registry")


def load_checkpoint(ckpt_path: str) -> dict:
    """The checkpoint at ``ckpt_path`` (tensors memory-mapped), if it is a complete one whose
    every part passes its checksum."""
    expected = "expected a .ckpt written by icl-lightning fit"
    path = Path(ckpt_path)
    if not path.is_file():
        raise ValueError(f"--ckpt_path={ckpt_path}: no such file; {expected}.")
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"--ckpt_path={ckpt_path} is not a complete checkpoint (truncated, or another "
            f"format); {expected}."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # every part against its CRC-32
        if not damaged:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 (a damaged pickle raises any kind of error)
        raise ValueError(
            f"--ckpt_path={ckpt_path} cannot be read ({type(error).__name__}: {error}); {expected}."
        ) from error
    if damaged:
        raise ValueError(
            f"--ckpt_path={ckpt_path} is damaged: its part {damaged} fails its checksum; "
            f"{expected}."
        )
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ValueError(f"--ckpt_path={ckpt_path} holds no state_dict; {expected}.")
    return checkpoint


def check_checkpoint_module(checkpoint: dict, ckpt_path: str, class_path: str) -> None:
    """The checkpoint's LightningModule class (if it says) must be the configured one."""
    theirs = checkpoint.get("hyper_parameters", {}).get("_class_path")
    if theirs and theirs != class_path:
        raise ValueError(
            f"--ckpt_path={ckpt_path} holds a {theirs}, but the model is a {class_path}: "
            "expected a checkpoint of the configured model (or the config it was trained with)."
        )


def check_checkpoint_finite(checkpoint: dict, ckpt_path: str) -> None:
    """Every floating weight in the checkpoint must be finite."""
    for name, tensor in checkpoint["state_dict"].items():
        if tensor.is_floating_point() and not tensor.isfinite().all():
            raise ValueError(
                f"--ckpt_path={ckpt_path} holds non-finite weights ({name}): expected a "
                "checkpoint of a run before it diverged."
            )


def check_checkpoint_resumable(checkpoint: dict, ckpt_path: str) -> None:
    """A fit can continue only a full checkpoint: weights, optimizer state and loop state."""
    if "optimizer_states" not in checkpoint or "loops" not in checkpoint:
        raise ValueError(
            f"--ckpt_path={ckpt_path} holds weights only (written with "
            "--checkpoint.save_weights_only=true), without the optimizer and loop state a fit "
            "continues from: expected a full checkpoint such as <run>/checkpoints/last.ckpt "
            "(validate and test do evaluate this one)."
        )


def check_resume_options(checkpoint: dict, ckpt_path: str, options: dict) -> None:
    """A resume must keep the model and data options recorded in the checkpoint (a
    checkpoint that records none is not checked)."""
    recorded = checkpoint.get(RUN_RECORD_KEY)
    changes = changed_options(recorded, options) if recorded else []
    if changes:
        raise ValueError(
            f"--ckpt_path={ckpt_path} was trained with other model/data options than this "
            f"resume's: {'; '.join(changes[:6])}{' ...' if len(changes) > 6 else ''}. Expected "
            "the options it was trained with (its run's config.yaml), or --allow_changes=true "
            "to continue with these (the run keeps its config.yaml and records this leg's as "
            "config-leg<k>.yaml)."
        )


def check_checkpoint_network(checkpoint: dict, ckpt_path: str, module: L.LightningModule) -> None:
    """The checkpoint must hold the module's network, with the same parameter names and shapes."""
    ours = network_class(module)
    theirs = checkpoint.get(NETWORK_CLASS_KEY, ours)
    if theirs != ours:
        raise ValueError(
            f"--ckpt_path={ckpt_path} holds a {theirs}, but the model is a {ours}: "
            "expected a checkpoint of the configured model (or the config it was trained with)."
        )
    saved = {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}
    wanted = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    if saved != wanted:
        differences = sorted(set(saved.items()) ^ set(wanted.items()))[:4]
        raise ValueError(
            f"--ckpt_path={ckpt_path} holds a {theirs} of another shape than the configured one "
            f"(parameters that differ, name and shape: {differences}); expected the options it "
            "was trained with."
        )


def check_linked_unset(config, links: dict[str, str]) -> None:
    """No option the CLI links from the data (``links``: target -> source) may be given: the
    link would overwrite it."""
    for target, source in links.items():
        value = config.get(target)
        if value is not None:
            raise ValueError(
                f"--{target}={value!r} is set from the data ({source}): expected it unset; "
                "set the data's option instead."
            )


def check_validation_schedule(
    interval: object, every_n_epochs: object, batches_per_epoch: int | None
) -> None:
    """An integer ``val_check_interval`` must fit in one epoch of ``batches_per_epoch`` steps;
    ``check_val_every_n_epoch`` must be None or >= 1."""
    if isinstance(interval, int) and batches_per_epoch is not None and interval > batches_per_epoch:
        raise ValueError(
            f"--trainer.val_check_interval={interval} is invalid: expected at most "
            f"data.batches_per_epoch={batches_per_epoch} steps, or a fraction of an epoch in "
            "(0, 1]."
        )
    if isinstance(every_n_epochs, int) and every_n_epochs < 1:
        raise ValueError(
            f"--trainer.check_val_every_n_epoch={every_n_epochs} is invalid: expected an "
            "integer >= 1, or null (validate by val_check_interval steps alone)."
        )


def prompt_bytes(num_prompts: int, num_context: int, input_dim: int, itemsize: int = 4) -> int:
    """Bytes of ``num_prompts`` prompts: ``(N + 1) * (d + 1)`` numbers each (context and query
    inputs and targets)."""
    return num_prompts * (num_context + 1) * (input_dim + 1) * itemsize


def free_memory(device: torch.device) -> int | None:
    """Free bytes on ``device`` (host memory for the CPU), or None where unknown."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(needs: dict[str, int], available: int | None) -> None:
    """Each option's prompt set (``option -> bytes``) must fit in the ``available`` bytes: a
    size far beyond memory is refused now, naming the option, not by the allocator later."""
    for option, needed in needs.items():
        if available is not None and needed > available:
            raise ValueError(
                f"--{option} needs {needed / 2**30:.1f} GiB for its prompts alone, but only "
                f"{available / 2**30:.1f} GiB are free on this device: expected a smaller value."
            )


def check_optimizer(optimizer: dict | None, lr_scheduler: dict | None) -> None:
    """Build the configured optimizer (and LR scheduler) once, on a stand-in parameter: an
    impossible value (a negative ``lr``) is named now, before the model is built."""
    if not optimizer:
        return
    try:
        built = instantiate_class([torch.nn.Parameter(torch.zeros(1))], optimizer)
        if lr_scheduler:
            instantiate_class(built, lr_scheduler)
    except ValueError as error:
        raise ValueError(f"--optimizer / --lr_scheduler: {error}") from error


def check_writable(option: str, folder: str) -> None:
    """``folder`` (created later if missing) must be writable: a file can be created in it or
    in its nearest existing parent."""
    path = Path(folder).absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(0, "a file, not a folder")
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise ValueError(
            f"--{option}={folder} cannot be written: {existing} is read-only or not writable "
            f"({error.strerror}); expected a folder this user can write to."
        ) from error
