"""NoProfiler: Lightning's default of no profiling, at no cost per hook call."""

import contextlib

from lightning.pytorch.profilers import PassThroughProfiler
from typing_extensions import override

_NOTHING = contextlib.nullcontext()


class NoProfiler(PassThroughProfiler):
    """PassThroughProfiler (what ``Trainer(profiler=None)`` uses) whose ``profile`` returns one
    shared, empty context instead of building a generator context manager.

    Lightning wraps every hook call of every callback in ``profiler.profile(name)``, about 50
    times a training step; with the default profiler that was a fifth of the Python calls
    Lightning makes per step. The CLI installs this one when no profiler is asked for;
    ``--trainer.profiler simple`` (or any other) is used as given.
    """

    @override
    def profile(self, action_name: str) -> contextlib.nullcontext:
        return _NOTHING
