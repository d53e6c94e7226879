"""Profilers for Lightning's hook calls, and the peak memory of a run.

- :class:`NoProfiler`: Lightning's default of no profiling, at no cost per hook call (the CLI
  installs it when no ``--trainer.profiler`` is given).
- :class:`HookTimer`: the start time of every training step and the wall time of every hook
  call of chosen callbacks (e.g. the probes), through Lightning's public profiler interface
  (``Trainer(profiler=...)`` or ``--trainer.profiler icl_lightning.profiling.HookTimer``).
- :func:`reset_peak_memory` / :func:`peak_memory_mb`: the peak of GPU memory or of the
  process's resident memory since the reset.
"""

import contextlib
import time
from pathlib import Path

import torch
from lightning.pytorch.profilers import PassThroughProfiler
from typing_extensions import override

_NOTHING = contextlib.nullcontext()
_CALLBACK = "[Callback]"


class NoProfiler(PassThroughProfiler):
    """PassThroughProfiler (what ``Trainer(profiler=None)`` uses) whose ``profile`` returns one
    shared, empty context instead of building a generator context manager.

    Lightning wraps every hook call of every callback in ``profiler.profile(name)``, tens of
    times per training step, and the default profiler builds a new context manager for each.
    ``--trainer.profiler simple`` (or any other) is used as given.
    """

    @override
    def profile(self, action_name: str) -> contextlib.nullcontext:
        return _NOTHING


def _synchronize() -> None:
    """Wait for queued CUDA work, so that a clock read after it counts that work."""
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


class _Span:
    """Context appending ``(callback, hook, start, end)`` to ``spans`` on exit."""

    __slots__ = ("spans", "callback", "hook", "start")

    def __init__(self, spans: list, callback: str, hook: str) -> None:
        self.spans, self.callback, self.hook = spans, callback, hook

    def __enter__(self) -> None:
        _synchronize()
        self.start = time.perf_counter()

    def __exit__(self, *exc) -> None:
        _synchronize()
        self.spans.append((self.callback, self.hook, self.start, time.perf_counter()))


class HookTimer(NoProfiler):
    """Clock of a ``fit``: when each training step starts, and how long each hook call of the
    chosen callbacks takes.

    Lightning calls ``profile("run_training_batch")`` once per optimizer step and
    ``profile("[Callback]<state_key>.<hook>")`` around every callback hook; this profiler reads
    the clock at the first (into :attr:`step_starts`) and times the second for the callbacks
    whose ``state_key`` is in ``callbacks`` (into :attr:`spans`). Steps ``a < b`` then took
    ``step_starts[b] - step_starts[a]`` seconds, everything included (data, step, hooks); every
    other hook costs what it costs under :class:`NoProfiler`. On CUDA the clock waits for queued
    work first.

    Args:
        callbacks: state keys of the callbacks to time (a probe's is its class name, or the
            class name and its ``tag``); ``None``: every callback.
    """

    def __init__(self, callbacks: list[str] | None = None) -> None:
        super().__init__()
        self.callbacks = None if callbacks is None else set(callbacks)
        #: ``time.perf_counter()`` at the start of every training step, in order
        self.step_starts: list[float] = []
        #: ``(callback state key, hook name, start, end)`` of every timed hook call
        self.spans: list[tuple[str, str, float, float]] = []
        self._routes: dict[str, tuple[str, str] | None] = {}

    def _route(self, action_name: str) -> tuple[str, str] | None:
        """``(state key, hook)`` when ``action_name`` is a hook call of a timed callback."""
        if action_name not in self._routes:
            route = None
            if action_name.startswith(_CALLBACK):
                key, _, hook = action_name[len(_CALLBACK) :].rpartition(".")
                if self.callbacks is None or key in self.callbacks:
                    route = (key, hook)
            self._routes[action_name] = route
        return self._routes[action_name]

    def start_step(self) -> None:
        """Read the clock at the start of a training step (a loop outside Lightning calls it
        where Lightning would)."""
        _synchronize()
        self.step_starts.append(time.perf_counter())

    @override
    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        if action_name == "run_training_batch":
            self.start_step()
            return _NOTHING
        route = self._route(action_name)
        return _NOTHING if route is None else _Span(self.spans, *route)

    def seconds(self, callback: str, hook: str | None = None) -> float:
        """Total seconds in the hook calls of ``callback`` (only ``hook`` when given)."""
        return sum(
            end - start
            for key, name, start, end in self.spans
            if key == callback and hook in (None, name)
        )

    def steps_per_second(self, warmup: int) -> float:
        """Steps per second from the start of step ``warmup`` to the start of the last step
        (``nan`` when fewer than two steps are in that window)."""
        starts = self.step_starts[warmup:]
        if len(starts) < 2:
            return float("nan")
        return (len(starts) - 1) / (starts[-1] - starts[0])

    @override
    def summary(self) -> str:
        """Seconds per timed callback and hook, and the number of calls."""
        totals: dict[tuple[str, str], list[float]] = {}
        for key, hook, start, end in self.spans:
            totals.setdefault((key, hook), []).append(end - start)
        lines = [f"{'callback.hook':<60s} {'calls':>7s} {'seconds':>9s}"]
        for (key, hook), times in sorted(totals.items()):
            lines.append(f"{key + '.' + hook:<60s} {len(times):7d} {sum(times):9.3f}")
        return "\n".join(lines) if totals else ""


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak: CUDA's allocator statistics, or the process's RSS high-water mark."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):  # Linux: "5" resets VmHWM to the current RSS
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory_mb(device: torch.device) -> float:
    """Peak since :func:`reset_peak_memory`: ``max_memory_allocated`` on GPU, max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
