"""AtomicCheckpointIO: a checkpoint replaces the previous one whole, or not at all."""

import errno
import os
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from typing_extensions import override


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, permissions): ``OSError(errno,
    reason, path)`` whose message names the file and says whether an earlier one of that name
    is left (``kept``)."""

    def __init__(self, code: int | None, reason: str, path: str, kept: str) -> None:
        super().__init__(code, reason, path)
        self.kept = kept

    def __str__(self) -> str:
        return f"Could not write the checkpoint {self.filename} ({self.strerror}); {self.kept}."


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO that writes ``<file>.<pid>.tmp`` beside the checkpoint (a temporary file
    of this process alone: two writers never write into one), flushes it to the disk
    and renames it over ``<file>``.

    The rename is atomic within one filesystem, so a write that fails (disk full, a kill) leaves
    the previous checkpoint of that name whole and loadable. (Lightning's own writer stages the
    file in the system's temporary folder and, when that is another filesystem, copies it over
    the old file, truncating it first.) A failed write removes its temporary file and raises
    :class:`CheckpointWriteError` naming the checkpoint. Remote paths (``s3://...``) and
    ``storage_options`` are left to Lightning's writer.

    The CLI installs it for every run. Example::

        trainer = L.Trainer(plugins=[AtomicCheckpointIO()])
    """

    @override
    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        if storage_options is not None or "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        path = Path(path)
        temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            kept = (
                f"the previous {path} is unchanged"
                if path.is_file()
                else "no earlier checkpoint of that name exists"
            )
            reason = error.strerror or errno.errorcode.get(error.errno or 0, str(error))
            raise CheckpointWriteError(error.errno, reason, str(path), kept) from error
