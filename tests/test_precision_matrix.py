"""Every precision Lightning accepts on CPU trains every shipped config for two steps, its probes
included (made cheap: few prompts); ``16-true`` is refused as a usage error.

``16-mixed`` is Lightning's ``bf16-mixed`` on CPU; both run the models' hand-written autograd
functions (:mod:`icl_lightning.models.linear_attention`) under autocast.
"""

import contextlib
import functools
import io
import json
import math

import pytest
import torch
import yaml
from conftest import CONFIGS, run_cli, tiny_args

from icl_lightning.callbacks import Probe
from icl_lightning.models.lsa import LSALayer

SHIPPED = sorted(CONFIGS.glob("*.yaml"))
PRECISIONS = ["64-true", "32-true", "bf16-true", "bf16-mixed", "16-mixed"]
# CI (`make test`, about 35 s of CPU) runs every config under bf16-mixed (autocast, the path of
# the custom autograd functions) but the larger GPT-2s of garg_tiny's family, and the demo under
# every precision; the rest of the matrix is marked slow (`make test-all`: about 2 more minutes
# of CPU)
LARGER = {"garg_small", "garg_standard"}
FAST = {(config.stem, "bf16-mixed") for config in SHIPPED if config.stem not in LARGER}
FAST |= {("demo", precision) for precision in PRECISIONS}


@functools.cache
def cheap_probes(config) -> str:
    """The config's resolved ``trainer.callbacks`` as a JSON option value, each probe measuring
    (and tuning its baselines) on 32 prompts instead of thousands."""
    with contextlib.redirect_stdout(io.StringIO()) as out, pytest.raises(SystemExit) as exit_info:
        run_cli(["fit", f"--config={config}", "--print_config"])
    assert exit_info.value.code == 0, f"{config.name} does not parse"
    callbacks = yaml.safe_load(out.getvalue())["trainer"]["callbacks"] or []
    for callback in callbacks:
        options = callback.get("init_args", {})
        options.update({key: 32 for key in ("num_tasks", "tuning_tasks") if key in options})
    return json.dumps(callbacks)


def matrix():
    for config in SHIPPED:
        for precision in PRECISIONS:
            slow = (config.stem, precision) not in FAST
            marks = [pytest.mark.slow] if slow else []
            yield pytest.param(config, precision, marks=marks, id=f"{config.stem}-{precision}")


@pytest.mark.parametrize("config, precision", matrix())
def test_every_config_trains_in_every_cpu_precision(config, precision, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = run_cli(
        [
            "fit",
            f"--config={config}",
            *tiny_args(tmp_path, steps=2),
            "--data.init_args.batch_size=16",
            "--data.init_args.num_val_tasks=32",
            f"--trainer.callbacks={cheap_probes(config)}",
            f"--trainer.precision={precision}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    assert cli.trainer.global_step == 2
    assert math.isfinite(cli.trainer.callback_metrics["train/loss"])
    probes = [callback for callback in cli.trainer.callbacks if isinstance(callback, Probe)]
    assert len(probes) == len(json.loads(cheap_probes(config)))
    for probe in probes:
        assert probe.last_results, f"{type(probe).__name__} measured nothing"
        assert all(map(math.isfinite, probe.last_results.values())), probe.last_results


def test_16_true_is_a_usage_error_naming_the_option(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            [
                "fit",
                f"--config={CONFIGS / 'demo.yaml'}",
                *tiny_args(tmp_path, steps=2),
                "--trainer.precision=16-true",
            ]
        )
    assert exit_info.value.code == 2
    assert "--trainer.precision=16-true" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("step", ["residual_update", "readout"])
def test_custom_autograd_under_autocast_matches_autograd(step):
    """Under bf16 autocast the hand-written backward passes
    (:mod:`icl_lightning.models.linear_attention`) give autograd's gradients of the same
    layer written with plain tensor operations, to bf16's precision, in float32."""
    torch.manual_seed(0)
    layer = LSALayer(4, init_scale=1.0)
    h = torch.randn(8, 6, 4, requires_grad=True)
    plain = {
        "residual_update": lambda h: h + layer(h, 5),
        "readout": lambda h: h[:, -1, -1] + layer.query_update(h, 5, slice(-1, None))[:, 0],
    }[step]
    grads = []
    for function in (getattr(layer, step), plain):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = function(h) if function is plain else function(h, 5)
        grads.append(torch.autograd.grad(out.float().square().sum(), [h, *layer.parameters()]))
    for custom, reference in zip(*grads, strict=True):
        assert custom.dtype == reference.dtype == torch.float32
        scale = reference.abs().max()
        assert (custom - reference).abs().max() <= 0.02 * scale
