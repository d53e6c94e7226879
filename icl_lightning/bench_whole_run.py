"""One whole ``icl-lightning fit`` run with its probes' hook calls timed, for icl-benchmark's
``probes`` table.

    python -m icl_lightning.bench_whole_run OUT.json --config configs/demo.yaml [FIT OPTIONS]

runs ``icl-lightning fit`` with the given options as the console script does (in
:func:`~icl_lightning.cli.run_process`), with a
:class:`~icl_lightning.profiling.HookTimer` on the config's probes in place of the default
profiler, and writes ``{"probe_seconds": {state key: seconds in its hook calls}, "steps": the
steps trained}`` to ``OUT.json``. The caller clocks the process: its wall time is the whole
run, imports, set-up, validation, checkpoints and the summary included.
"""

import json
import sys
from pathlib import Path

from icl_lightning.callbacks.probe import Probe
from icl_lightning.cli import ICLLightningCLI, run_process
from icl_lightning.profiling import HookTimer


class ProbesTimedCLI(ICLLightningCLI):
    """``icl-lightning`` whose trainer times its probes' hook calls (:class:`HookTimer`)."""

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        probes = [c.state_key for c in self.trainer.callbacks if isinstance(c, Probe)]
        self.trainer.profiler = HookTimer(probes)


def main(argv: list[str] | None = None) -> None:
    out, *options = sys.argv[1:] if argv is None else argv
    with run_process():
        cli = ProbesTimedCLI(args=["fit", *options])
    timer = cli.trainer.profiler
    seconds = {key: timer.seconds(key) for key in timer.callbacks}
    result = {"probe_seconds": seconds, "steps": cli.trainer.global_step}
    Path(out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
